// The dashboard's stylesheet and script, read once from static/ beside this file and served
// from /ui/static with a version in their URL (a hash of their bytes), so browsers keep them
// until they change. Both are files of their own because the Content-Security-Policy allows no
// inline style or script.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Request, Response } from 'express';

const read = (name: string): Buffer => readFileSync(new URL(`./static/${name}`, import.meta.url));

const FILES: ReadonlyMap<string, { body: Buffer; type: string }> = new Map([
  ['dashboard.css', { body: read('dashboard.css'), type: 'text/css; charset=utf-8' }],
  ['dashboard.js', { body: read('dashboard.js'), type: 'text/javascript; charset=utf-8' }],
]);

export const STATIC_VERSION = createHash('sha256')
  .update(Buffer.concat([...FILES.values()].map((f) => f.body)))
  .digest('hex')
  .slice(0, 12);

/** GET /ui/static/:file */
export function serveStatic(req: Request<{ file: string }>, res: Response): void {
  const file = FILES.get(req.params.file);
  if (file === undefined) {
    res.status(404).type('text/plain').send('not found');
    return;
  }
  res.setHeader('Cache-Control', 'public, max-age=31536000, immutable');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.type(file.type).send(file.body);
}
