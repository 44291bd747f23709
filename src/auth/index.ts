export { headerValue, SECRET_ENV, SecretCheck, SecretSettingError, secretFromEnv } from './secret.js';
