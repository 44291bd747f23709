import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';

/** A KV write refused because the key changed since it was read (compare-and-swap lost): read again and retry. */
export function isKvConflict(error: unknown): boolean {
  return (
    error instanceof JetStreamApiError &&
    (error.code === JetStreamApiCodes.StreamWrongLastSequence ||
      error.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}
