/**
 * The aggregator's metrics (OpenTelemetry API only): its lag behind the usage stream, read at each
 * collection, and the events it applied, skipped as duplicates or refused as invalid.
 */
import { ValueType, type BatchObservableResult, type MeterProvider } from '@opentelemetry/api';
import { meterOf } from '../telemetry/metrics.js';

export interface AggregatorGauges {
  /** Messages in the usage stream not yet applied (the stream's last sequence minus the applied one); undefined when unknown. */
  lag(): Promise<number | undefined>;
  stats(): { events: number; duplicates: number; invalid: number };
}

/** Observes the aggregator's gauges until the returned function is called. */
export function observeAggregator(gauges: AggregatorGauges, meterProvider?: MeterProvider): () => void {
  const meter = meterOf(meterProvider);
  const lag = meter.createObservableGauge('llm_proxy.aggregator.lag', {
    description: 'Usage events in the stream the aggregator has not applied yet',
    unit: '{event}',
    valueType: ValueType.INT,
  });
  const events = meter.createObservableCounter('llm_proxy.aggregator.events', {
    description: 'Usage events the aggregator took, by outcome (counted, duplicate, invalid)',
    unit: '{event}',
    valueType: ValueType.INT,
  });
  const callback = async (result: BatchObservableResult) => {
    const stats = gauges.stats();
    result.observe(events, stats.events, { 'llm_proxy.outcome': 'counted' });
    result.observe(events, stats.duplicates, { 'llm_proxy.outcome': 'duplicate' });
    result.observe(events, stats.invalid, { 'llm_proxy.outcome': 'invalid' });
    const behind = await gauges.lag();
    if (behind !== undefined) result.observe(lag, behind);
  };
  meter.addBatchObservableCallback(callback, [lag, events]);
  return () => meter.removeBatchObservableCallback(callback, [lag, events]);
}
