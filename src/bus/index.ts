export * from './connect.js';
export * from './dev-server.js';
export * from './inbox.js';
export * from './jetstream-domain.js';
