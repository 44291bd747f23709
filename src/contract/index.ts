export * from './errors.js';
export * from './subjects.js';
export * from './request.js';
export * from './reply.js';
export * from './usage-event.js';
export * from './usage-query.js';
export * from './models.js';
