/**
 * The PostgreSQL sink's metrics (OpenTelemetry API only): its lag (events of the stream its durable
 * has not had committed), and the events it stored, found already stored, or filed as dead letters.
 */
import { ValueType, type BatchObservableResult, type MeterProvider } from '@opentelemetry/api';
import { meterOf } from '../telemetry/metrics.js';
import type { SinkStats } from './postgres-sink.js';

export interface SinkGauges {
  lag(): Promise<number | undefined>;
  stats(): SinkStats;
}

/** Observes the sink's gauges until the returned function is called. */
export function observeSink(gauges: SinkGauges, meterProvider?: MeterProvider): () => void {
  const meter = meterOf(meterProvider);
  const lag = meter.createObservableGauge('llm_proxy.sink.lag', {
    description: 'Usage events in the stream the PostgreSQL sinks have not committed yet',
    unit: '{event}',
    valueType: ValueType.INT,
  });
  const events = meter.createObservableCounter('llm_proxy.sink.events', {
    description: 'Usage events the sink took, by outcome (inserted, duplicate, dead_letter)',
    unit: '{event}',
    valueType: ValueType.INT,
  });
  const retries = meter.createObservableCounter('llm_proxy.sink.retries', {
    description: 'Batches tried again because the database did not answer',
    unit: '{batch}',
    valueType: ValueType.INT,
  });
  const callback = async (result: BatchObservableResult) => {
    const stats = gauges.stats();
    result.observe(events, stats.inserted, { 'llm_proxy.outcome': 'inserted' });
    result.observe(events, stats.duplicates, { 'llm_proxy.outcome': 'duplicate' });
    result.observe(events, stats.dead_letters, { 'llm_proxy.outcome': 'dead_letter' });
    result.observe(retries, stats.retries);
    const behind = await gauges.lag();
    if (behind !== undefined) result.observe(lag, behind);
  };
  meter.addBatchObservableCallback(callback, [lag, events, retries]);
  return () => meter.removeBatchObservableCallback(callback, [lag, events, retries]);
}
