// Entry for Chromium (bundled by esbuild, loaded by a page on localhost).
import * as core from '@kms-proxy/core'
import * as passphrase from '@kms-proxy/passphrase'
import { runSuite } from '../suite/run.mjs'

globalThis.runSuite = (input) => runSuite({ core, passphrase }, input)
globalThis.suiteReady = true
