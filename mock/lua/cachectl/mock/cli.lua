--- The command line of `cachectl-mock`, on argparse.
-- @module cachectl.mock.cli

local io, os, math = io, os, math
local pcall, tonumber, tostring = pcall, tonumber, tostring

local argparse = require "argparse"
local modelsfile = require "cachectl.mock.modelsfile"
local server = require "cachectl.mock.server"

local cli = {}

-- argparse converters: a value, or nil and a message.
local function integer_from(name, low, high)
  return function(s)
    local n = tonumber(s)
    if not n or n ~= math.floor(n) or n < low or (high and n > high) then
      return nil, name .. " must be an integer " .. (high and ("from " .. low .. " to " .. high) or (">= " .. low))
    end
    return n
  end
end

local function seconds(name)
  return function(s)
    local n = tonumber(s)
    if not n or n <= 0 then return nil, name .. " must be a number of seconds > 0" end
    return n
  end
end

local function parser()
  local p = argparse("cachectl-mock",
    "Serves mock ModelsLab and Omni APIs for tests. Prints the listening URL as the first line "
    .. "of stdout, then serves until killed. See docs/mock.md.")
  p:option("--host", "Address to listen on.", "127.0.0.1")
  p:option("--port", "Port to listen on (0: any free port).", "0"):convert(integer_from("--port", 0, 65535))
  p:option("--omni-rate-limit", "Omni requests allowed per token in any window of --omni-rate-limit-per "
    .. "seconds (default: no limit)."):argname("<n>"):convert(integer_from("--omni-rate-limit", 1))
  p:option("--omni-rate-limit-per", "Window of --omni-rate-limit, seconds.", "60"):argname("<s>")
    :convert(seconds("--omni-rate-limit-per"))
  p:option("--omni-error-shape", "Omni error bodies: detail ({detail, status}) or error ({error, message}) "
    .. "on every endpoint (default: each endpoint's documented shape)."):choices({ "detail", "error" })
  p:option("--page-size", "Default page size of GET /v1/models.", tostring(server.PAGE_SIZE))
    :argname("<n>"):convert(integer_from("--page-size", 1))
  p:option("--max-body", "Largest request body accepted, bytes.", tostring(64 * 1024 * 1024))
    :argname("<bytes>"):convert(integer_from("--max-body", 1))
  p:option("--max-connections", "Connections held at once (at most 1000).", "900")
    :argname("<n>"):convert(integer_from("--max-connections", 1, 1000))
  p:option("--tls-cert", "Serve HTTPS with this PEM certificate (needs --tls-key)."):argname("<path>")
  p:option("--tls-key", "PEM private key for --tls-cert."):argname("<path>")
  p:option("--models", "Omni models to serve from the start, from a .json or .yaml/.yml file shaped as "
    .. "the body of POST /_mock/models; every reset restores them."):argname("<file>")
  p:flag("--exit-with-parent", "Exit when the reader of stdout (a pipe) goes away.")
  return p
end

-- The serve() options of parsed arguments, or nil, message.
local function options(args)
  if (args.tls_cert == nil) ~= (args.tls_key == nil) then return nil, "--tls-cert and --tls-key go together" end
  if args.models then
    local ok, err = modelsfile.load(args.models)
    if not ok then return nil, "--models " .. err end
  end
  return {
    host = args.host, port = args.port, omni_rate_limit = args.omni_rate_limit,
    omni_rate_limit_per = args.omni_rate_limit_per, omni_error_shape = args.omni_error_shape,
    page_size = args.page_size, max_body = args.max_body, max_connections = args.max_connections,
    tls = args.tls_cert and { certificate = args.tls_cert, key = args.tls_key } or nil,
    exit_with_parent = args.exit_with_parent or nil, models = args.models,
  }
end

--- Command-line entry point of `cachectl-mock`: prints the listening URL as
-- the first line of stdout, then serves forever. Exits with status 2 on bad
-- usage, 1 when the server cannot start.
-- @param argv array of command-line arguments (as the global `arg`)
function cli.main(argv)
  local args = {}
  for i = 1, #(argv or {}) do args[i] = argv[i] end
  local p = parser()
  local ok, parsed = p:pparse(args)
  local opts, err
  if ok then opts, err = options(parsed) else err = parsed end
  if not opts then
    io.stderr:write(p:get_usage(), "\n\ncachectl-mock: ", tostring(err), "\n")
    os.exit(2)
  end
  opts.on_listen = function(url)
    io.stdout:write(url, "\n")
    io.stdout:flush()
  end
  local _, failure = pcall(server.serve, opts)
  io.stderr:write("cachectl-mock: ", tostring(failure), "\n")
  os.exit(1)
end

return cli
