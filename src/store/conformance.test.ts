// Every Store backend runs the one conformance suite (docs/architecture.md "Interfaces"):
// the embedded SQLite store and PostgreSQL (a database of this file on the test server).
import { describe } from 'vitest';
import { storeBackends } from '../../test/helpers/store-backends.ts';
import { storeConformanceSuite } from './conformance.ts';

for (const backend of storeBackends) {
  describe.skipIf(backend.skipped)(backend.name, () => {
    storeConformanceSuite(backend.name, () => backend.open());
  });
}
