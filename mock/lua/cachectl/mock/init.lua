--- Mock HTTP server for the ModelsLab and Omni APIs used by cachectl, for
-- tests (the `cachectl-mock` command and `require "cachectl.mock"`).
--
-- It serves ModelsLab "Clear User Cache" and the Enterprise actions of any
-- product, Omni "Reset cache", the Omni model list and model YAML; records
-- every API request; has a control API under `/_mock/`; injects faults
-- chosen by rules per route or by directives in the credential; and keeps serving other clients
-- whatever one client sends. docs/mock.md describes it in full.
--
-- The parts, one concern each: `cachectl.mock.http` (HTTP/1.1),
-- `.conn` (buffered non-blocking I/O), `.loop` (the select loop), `.server`
-- (state and dispatch), `.modelslab` and `.omni` (the vendors' routes),
-- `.models` (the Omni models), `.modelsfile` (`--models FILE`), `.openapi` (requests
-- checked against the vendors' OpenAPI documents), `.ratelimit`, `.faults`,
-- `.rules` (fault rules), `.log` (the bounded request log), `.control`, `.cli`
-- (the command line), `.launcher` (`start` and its handle), `.busted` (one mock
-- per spec file), `.json` (strict JSON), `.match` (globs and expressions matched
-- without backtracking), `.util`.
--
-- Portable Lua: runs under Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT.
-- @module cachectl.mock

local cli = require "cachectl.mock.cli"
local launcher = require "cachectl.mock.launcher"
local server = require "cachectl.mock.server"

local mock = {}

--- Runs the mock server in this process until it is killed.
-- @function serve
-- @param opts table (optional): `host` (default "127.0.0.1"), `port` (default 0 = any free port),
--   `on_listen` function called with the URL once listening,
--   `omni_rate_limit` Omni requests per token in any window of `omni_rate_limit_per` seconds (default 60; nil = off),
--   `omni_error_shape` "detail" | "error" (default: each endpoint's documented shape),
--   `page_size` default page size of the model list (default 2),
--   `max_body` largest request body in bytes (default 64 MiB),
--   `max_connections` connections held at once (default 900, at most 1000),
--   `tls` `{ certificate = PATH, key = PATH }` to serve HTTPS,
--   `models` the path of a .json or .yaml/.yml file of Omni models (the body of POST /_mock/models),
--   `exit_with_parent` exit when stdout (a pipe) loses its reader
-- @return never returns; raises an error naming a bad or unknown option, or if it cannot listen
mock.serve = server.serve

--- Command-line entry point of `cachectl-mock`.
-- Prints the listening URL as the first line of stdout, then serves forever.
-- Exits with status 2 on bad usage, 1 when the server cannot start.
-- @function main
-- @param argv array of command-line arguments (as the global `arg`)
mock.main = cli.main

--- Starts a mock server in a separate process (for tests).
-- @function start
-- @param opts table (optional): the options of `serve` but `on_listen` and `exit_with_parent`,
--   and `lua` (interpreter command, default "lua5.4"); a bad or unknown option raises, naming it
-- @return handle with fields `url`, `pid` and methods `requests(filter)`, `count(filter)`,
--   `fault(rule)`, `faults()`, `stats()`, `reset()`, `define_models(list, replace)`, `stop()`
mock.start = launcher.start

return mock
