import type { Command } from "commander";

/**
 * Commands that talk to a running server over its API (`test-call`, `trigger`, `listen`).
 * Registered here so main.ts stays the map of the CLI.
 */
export function registerClientCommands(_program: Command): void {}
