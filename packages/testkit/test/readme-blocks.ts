import { readFileSync } from 'node:fs'

/** One fenced code block of a README: its info string's language and its text. */
export interface ReadmeBlock {
  lang: string
  text: string
}

/**
 * The fenced code blocks of a README, in order, so that a test can run the commands an example's
 * README gives exactly as a reader would copy them (the docs cannot drift from what is tested).
 * `lang` filters on the info string (`sh`, `bash`, `console`…); without it every block is returned.
 */
export function readmeBlocks(readmePath: string, ...langs: string[]): ReadmeBlock[] {
  const text = readFileSync(readmePath, 'utf8')
  const blocks: ReadmeBlock[] = []
  const fence = /^```([^\n`]*)\n([\s\S]*?)^```\s*$/gm
  for (const m of text.matchAll(fence)) {
    const lang = m[1]!.trim().split(/\s+/)[0] ?? ''
    if (langs.length === 0 || langs.includes(lang)) blocks.push({ lang, text: m[2]! })
  }
  return blocks
}

/**
 * The shell commands of a README's `sh`/`bash` blocks, one per entry: `\`-continued lines
 * joined, comments after `#` at a line start dropped, blank lines skipped.
 */
export function readmeCommands(readmePath: string): string[] {
  const commands: string[] = []
  for (const block of readmeBlocks(readmePath, 'sh', 'bash', 'shell')) {
    let pending = ''
    for (const line of block.text.split('\n')) {
      if (pending === '' && /^\s*(#|$)/.test(line)) continue
      if (line.endsWith('\\')) {
        pending += line.slice(0, -1) + ' '
        continue
      }
      commands.push((pending + line).trim())
      pending = ''
    }
    if (pending.trim() !== '') commands.push(pending.trim())
  }
  return commands
}
