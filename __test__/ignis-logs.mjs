// The Ignis packages log to files in APP_ENV_LOGGER_FOLDER_PATH (default:
// the working directory). Tests and benchmarks that load them, or start
// processes that do, import this (through helpers.mjs or redis-helpers.mjs)
// first, so those files land in a temporary
// folder instead of the repository.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

if (!process.env.APP_ENV_LOGGER_FOLDER_PATH) {
  const dir = path.join(os.tmpdir(), 'ignis-ws-native-logs');
  fs.mkdirSync(dir, { recursive: true });
  process.env.APP_ENV_LOGGER_FOLDER_PATH = dir;
}
