--- Test certificates for the HTTPS mock: a throw-away CA and a server
-- certificate it signs for 127.0.0.1 and localhost, made with the openssl
-- command in a fresh temporary directory.
-- Usage: `local certs = tls.make()` in `setup` (certs.ca, certs.cert,
-- certs.key are file paths), `certs:cleanup()` in `teardown`.
local io, os, table = io, os, table
local assert, error, ipairs, setmetatable = assert, error, ipairs, setmetatable

local helpers = require "support.helpers"
local sh_quote, write_file = helpers.sh_quote, helpers.write_file

local M = {}

local Certs = {}
Certs.__index = Certs

local FILES = { "ca.key", "ca.pem", "ca.srl", "server.key", "server.csr", "server.pem", "server.ext" }

-- Runs an openssl command; raises with its output when it fails.
local function openssl(dir, args)
  local log = dir .. "/openssl.log"
  local ok = os.execute("cd " .. sh_quote(dir) .. " && openssl " .. args .. " >" .. sh_quote(log) .. " 2>&1")
  if ok ~= true and ok ~= 0 then
    local f = io.open(log)
    local out = f and f:read("*a") or ""
    if f then f:close() end
    error("openssl " .. args:match("^%S+") .. " failed: " .. out, 2)
  end
end

--- Makes the CA and the server certificate (P-256 keys, valid 2 days).
-- @return certs { dir, ca, cert, key } with a `cleanup` method
function M.make()
  local dir = os.tmpname()          -- a unique name; replaced by a directory
  os.remove(dir)
  assert(os.execute("mkdir -m 700 " .. sh_quote(dir)), "cannot create " .. dir)
  local certs = setmetatable({ dir = dir, ca = dir .. "/ca.pem", cert = dir .. "/server.pem",
                               key = dir .. "/server.key" }, Certs)
  local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  openssl(dir, "req -x509 " .. ec .. " -keyout ca.key -out ca.pem -days 2"
    .. " -subj '/CN=cachectl test CA'"
    .. " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign")
  openssl(dir, "req " .. ec .. " -keyout server.key -out server.csr -subj '/CN=127.0.0.1'")
  write_file(dir .. "/server.ext", table.concat({
    "basicConstraints = CA:FALSE",
    "keyUsage = critical, digitalSignature, keyEncipherment",
    "extendedKeyUsage = serverAuth",
    "subjectAltName = IP:127.0.0.1, DNS:localhost",
  }, "\n") .. "\n")
  openssl(dir, "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
    .. " -out server.pem -days 2 -extfile server.ext")
  return certs
end

--- Removes the files and the directory; safe to call twice.
function Certs:cleanup()
  if not self.dir then return end
  for _, name in ipairs(FILES) do os.remove(self.dir .. "/" .. name) end
  os.remove(self.dir .. "/openssl.log")
  os.remove(self.dir)
  self.dir = nil
end

return M
