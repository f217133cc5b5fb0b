// A test harness that needs no test runner: the same suite runs in Node, Deno, Bun, workerd and
// Chromium. Tests run one after another; a failure records its message and goes on.

export class AssertionError extends Error {}

export function createHarness() {
  const tests = []
  const t = {
    test(name, fn) {
      tests.push({ name, fn })
    },
    ok(value, message = 'expected a truthy value') {
      if (!value) throw new AssertionError(message)
    },
    equal(actual, expected, message = '') {
      if (actual !== expected) throw new AssertionError(`${message} expected ${show(expected)}, got ${show(actual)}`.trim())
    },
    bytesEqual(actual, expected, message = '') {
      if (!(actual instanceof Uint8Array)) throw new AssertionError(`${message} expected bytes, got ${show(actual)}`.trim())
      if (actual.length !== expected.length) throw new AssertionError(`${message} lengths differ: ${actual.length} vs ${expected.length}`.trim())
      for (let i = 0; i < actual.length; i++) {
        if (actual[i] !== expected[i]) throw new AssertionError(`${message} bytes differ at ${i}`.trim())
      }
    },
    /** Awaits a rejection and returns the error; `check(error)` may assert more. */
    async rejects(promiseOrFn, check, message = 'expected a rejection') {
      let value
      try {
        value = await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn)
      } catch (error) {
        if (check) check(error)
        return error
      }
      throw new AssertionError(`${message}; it resolved to ${show(value)}`)
    },
  }
  async function run() {
    const results = []
    for (const { name, fn } of tests) {
      const started = Date.now()
      try {
        await fn()
        results.push({ name, ok: true, ms: Date.now() - started })
      } catch (error) {
        results.push({ name, ok: false, ms: Date.now() - started, error: `${error?.name ?? 'Error'}: ${error?.message ?? String(error)}` })
      }
    }
    return results
  }
  return { t, run }
}

function show(value) {
  if (value instanceof Uint8Array) return `Uint8Array(${value.length})`
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? value.slice(0, 80) + '…' : value)
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return String(value)
  }
}
