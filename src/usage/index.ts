export * from './tokens.js';
export * from './cost.js';
export * from './event.js';
export * from './publisher.js';
export * from './event-time.js';
export * from './units.js';
