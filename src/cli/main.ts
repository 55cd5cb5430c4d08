#!/usr/bin/env node
import { run } from './commands.js';

run(process.argv).then(
  (code) => {
    if (code !== undefined) process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`asap: ${(err as Error).message}\n`);
    process.exitCode = 2;
  },
);
