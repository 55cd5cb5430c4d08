/**
 * The JSON Schemas published by the Python reference: ../shared/reference-schemas next to this
 * repository, or the directory ASAP_REFERENCE_SCHEMAS names. Under CI (CI=true, as .ci/run sets) the
 * checks that need them fail when they are missing; elsewhere they are skipped with a warning.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const override = process.env.ASAP_REFERENCE_SCHEMAS;

export const SCHEMA_DIR: URL =
  override !== undefined && override !== ''
    ? pathToFileURL(`${resolve(override)}/`)
    : new URL('../../../shared/reference-schemas/', import.meta.url);

export const SCHEMAS_PRESENT = existsSync(fileURLToPath(new URL('envelope.schema.json', SCHEMA_DIR)));

/** CI=true (or any value but '' and 'false'): what is missing fails the run instead of skipping tests. */
export const CI = process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false';
