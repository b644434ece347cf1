// The timer background work (FHIR polling, FHIR recovery) waits with: injectable, so tests
// drive it without sleeping; the default does not keep the process alive.
export interface Timer {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const BACKGROUND_TIMER: Timer = {
  setTimeout(fn, ms) {
    const handle = setTimeout(fn, ms);
    handle.unref();
    return handle;
  },
  clearTimeout(handle) {
    clearTimeout(handle as NodeJS.Timeout);
  },
};

/**
 * Runs `work` after `firstMs`, then `everyMs` after each run ends (runs never overlap), until
 * stop(). A failed run is handed to `onError` and the next one still comes.
 */
export function repeat(timer: Timer, firstMs: number, everyMs: number, work: () => Promise<unknown>, onError: (error: unknown) => void): { stop(): void } {
  let stopped = false;
  let handle: unknown;
  const tick = (): void => {
    if (stopped) return;
    void work()
      .catch(onError)
      .finally(() => {
        if (!stopped) handle = timer.setTimeout(tick, everyMs);
      });
  };
  handle = timer.setTimeout(tick, firstMs);
  return {
    stop() {
      stopped = true;
      timer.clearTimeout(handle);
    },
  };
}
