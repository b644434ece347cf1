// Counts things arriving at a stand-in (requests, messages) and lets a test wait until a
// number of them has arrived: an event to wait on instead of a sleep.
export class Arrivals {
  #count = 0;
  readonly #waiters: Array<{ n: number; resolve: () => void }> = [];

  get count(): number {
    return this.#count;
  }

  /** One more arrived: wakes the waits it satisfies. */
  arrive(): void {
    this.#count++;
    for (const w of this.#waiters.filter((w) => this.#count >= w.n)) {
      this.#waiters.splice(this.#waiters.indexOf(w), 1);
      w.resolve();
    }
  }

  /** Resolves once `n` have arrived. */
  waitFor(n: number): Promise<void> {
    return this.#count >= n ? Promise.resolve() : new Promise<void>((resolve) => this.#waiters.push({ n, resolve }));
  }
}
