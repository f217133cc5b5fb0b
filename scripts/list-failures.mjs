// Prints the name of every failed check in the JSON results the test command wrote, so that the
// last lines of its output say what failed, not only how many. Reads .tmp/failures.txt (lines the
// script suites flagged) and the vitest and conformance JSON files; prints nothing when all passed.
import { existsSync, readFileSync, readdirSync } from 'node:fs';

const out = [];
const clip = (s) => String(s ?? '').replace(/\s+/g, ' ').trim().slice(0, 300);
for (const file of readdirSync('.tmp').filter((f) => /^vitest-.+\.json$/.test(f)).sort()) {
  const label = file.slice('vitest-'.length, -'.json'.length).replace(/-/g, ' ');
  let report;
  try { report = JSON.parse(readFileSync(`.tmp/${file}`, 'utf8')); } catch { continue; }
  for (const suite of report.testResults ?? []) {
    const path = String(suite.name ?? '').replace(`${process.cwd()}/`, '');
    const failed = (suite.assertionResults ?? []).filter((t) => t.status === 'failed');
    for (const t of failed) out.push(`vitest, ${label}: ${path} > ${t.fullName}: ${clip(t.failureMessages?.[0])}`);
    // A file that failed to load or ended with an error has no failed test of its own.
    if (!failed.length && suite.status === 'failed') out.push(`vitest, ${label}: ${path}: ${clip(suite.message)}`);
  }
}
if (existsSync('.tmp/e2e.json')) {
  const e2e = JSON.parse(readFileSync('.tmp/e2e.json', 'utf8'));
  for (const rt of e2e.runtimes ?? []) if (rt.error) out.push(`conformance, ${rt.name}: could not run: ${clip(rt.error)}`)
  for (const rt of e2e.runtimes ?? []) for (const r of rt.results ?? []) if (!r.ok) out.push(`conformance, ${rt.name}: ${r.name}: ${clip(r.error ?? r.detail)}`);
  for (const [name, m] of Object.entries(e2e.matrix ?? {})) if (!m.ok) out.push(`conformance matrix: ${name}: ${clip(m.error)}`);
  for (const c of e2e.checks ?? []) if (!c.ok) out.push(`packaging: ${c.name}: ${clip(c.detail)}`);
}
if (existsSync('.tmp/failures.txt')) out.push(...readFileSync('.tmp/failures.txt', 'utf8').split('\n').filter(Boolean));
if (out.length) {
  console.log(`== what failed (${out.length})`);
  for (const line of out.slice(0, 40)) console.log(`  ${line}`);
  if (out.length > 40) console.log(`  and ${out.length - 40} more`);
}
