export * from './tokens.js';
export * from './cost.js';
export * from './event.js';
export * from './publisher.js';
