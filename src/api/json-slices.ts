// Large JSON answers in slices. The store and the HTTP handlers share the event loop with
// every MLLP connection waiting for its ACK, and stringifying a page of 1,000 deliveries at
// once holds it for tens of milliseconds. A list answer is written as its items in slices of
// SLICE_ITEMS, yielding between them; the bytes are the same JSON a single res.json gives.
import type { Response } from 'express';

const SLICE_ITEMS = 50;

/**
 * Sends `{ "items": [ …map(item)… ], …rest }` with status 200, stringifying at most
 * SLICE_ITEMS items before yielding to the event loop.
 */
export async function sendItems<T>(res: Response, items: readonly T[], map: (item: T) => unknown, rest: Record<string, unknown>): Promise<void> {
  res.status(200).type('application/json');
  // Written as it is made (chunked): no whole-page string to copy, hash for an ETag or send at once.
  res.write('{"items":[');
  for (let i = 0; i < items.length; i += SLICE_ITEMS) {
    if (i > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    res.write(
      (i > 0 ? ',' : '') +
        items
          .slice(i, i + SLICE_ITEMS)
          .map((item) => JSON.stringify(map(item)))
          .join(','),
    );
  }
  const tail = JSON.stringify(rest);
  res.end(tail === '{}' ? ']}' : `],${tail.slice(1)}`);
}
