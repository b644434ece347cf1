import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // Protocol, crash and store tests open real sockets and child processes.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Vitest runs cores − 1 files at once (one on a 2-core machine). Many files wait on sockets,
    // child processes and fsync rather than the CPU, so at least two at once keeps both cores busy; each
    // file has its own ports, data directories, database and Redis key prefix.
    maxWorkers: Math.max(2, availableParallelism() - 1),
  },
});
