/**
 * A server command's life after it started: on SIGTERM or SIGINT, `close` it and exit 0 (1 when
 * closing failed); a second signal exits at once (130).
 */
export function closeOnSignal(close: () => Promise<void>): Promise<number> {
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = () => {
      if (stopping) process.exit(130);
      stopping = true;
      close().then(
        () => resolve(0),
        () => resolve(1),
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}
