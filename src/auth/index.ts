export {
  headerValue,
  readHeaders,
  type ReadHeaders,
  SECRET_ENV,
  SecretCheck,
  SecretSettingError,
  secretFromEnv,
} from './secret.js';
export { type Caller, CallerCheck, callerError, contradiction, withKeyIdentity } from './caller.js';
export { KeyDirectory, type KeyLookup } from './key-directory.js';
export { hashKey, KEY_ID_PATTERN, KEY_PREFIX, newKey, newKeyId, parseKey } from './key-format.js';
export { DEFAULT_KEYS_BUCKET, keyRecordSchema, keyStanding, type KeyRecord, type KeyRejection } from './key-record.js';
export { KeyStore, KeyStoreError, type KeySummary, type NewKeySpec, openKeysBucket, summarize } from './key-store.js';
