export {
  headerValue,
  readHeaders,
  type ReadHeaders,
  SECRET_ENV,
  SecretCheck,
  SecretSettingError,
  secretFromEnv,
} from './secret.js';
