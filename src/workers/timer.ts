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
