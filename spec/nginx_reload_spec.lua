-- nginx's graceful shutdown in a real nginx configured as docs/nginx.md
-- says: a request or timer whose call is in flight (waiting for its worker
-- thread) keeps its worker alive through `nginx -s reload` and `nginx -s
-- quit` until the call ends, and every client gets its own answer; warm
-- really readies the worker-thread VMs. The mock holds every call for a
-- second, so that the calls are in flight when the signal comes.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local nginx_server = require "support.nginx_server"
local life = require "support.nginx_life"

local uid = helpers.uid
local request = nginx_server.request

local THREADS = 16

describe("nginx reload and quit (graceful shutdown) #nginx", function()
  local root = nginx_server.root_dir(debug.getinfo(1, "S").source)
  local TOKEN = uid("tok-reload") .. ";hold=1"
  local srv, n

  setup(function()
    nginx_server.prepare(root)
    srv = server.start()
    n = life.start(root, { threads = THREADS }, TOKEN, srv.base)
  end)

  teardown(function()
    if n then n:stop() end
    if srv then srv:stop() end
  end)

  before_each(function() srv:reset() end)

  it("warm readies the VMs (as many as threads) and logs no warning", function()
    assert.equal(THREADS, request(n.port, "GET", "/warmed").json.warmed)
    -- VMs are handed out last-in first-out: of THREADS + 4 tasks at once,
    -- THREADS get a warmed VM and 4 get new ones
    local probe = request(n.port, "GET", "/probe?n=" .. (THREADS + 4)).json
    assert.same({ loaded = THREADS, vms = THREADS + 4 }, probe)
    local log = n:logs()
    assert.is_nil(log:find("warming", 1, true), log)
    assert.is_nil(log:find("lua entry thread aborted", 1, true), log)
    assert.is_nil(log:find("[warn]", 1, true), log)
  end)

  it("40 calls in flight across nginx -s reload: each client gets its own answer", function()
    local old = life.workers(n.pid)
    assert.equal(1, #old)
    local conns = life.fire(n.port, "reload-", 40)
    assert.is_true(life.arrived(srv, TOKEN, THREADS) >= THREADS, "the calls did not reach the mock")
    life.signal(n, "reload")
    local own, others, pids = life.tally(conns, "reload-")
    print(("\n  nginx: reload with 40 calls in flight: %d of 40 answered with their own result"):format(own))
    assert.same({}, others)
    assert.equal(40, own)
    assert.same({ [old[1]] = true }, pids)
    assert.is_true(life.gone(old[1]), "the old worker still runs")
    local after = request(n.port, "GET", "/reset?policy=after-reload")
    assert.equal("after-reload", after.json.policy)
    assert.are_not.equal(old[1], after.json.pid)
  end)

  it("two reloads in a row with 20 calls in flight: each client gets its own answer", function()
    local conns = life.fire(n.port, "twice-", 20)
    assert.is_true(life.arrived(srv, TOKEN, THREADS) >= THREADS, "the calls did not reach the mock")
    life.signal(n, "reload")
    life.signal(n, "reload")
    local own, others = life.tally(conns, "twice-")
    assert.same({}, others)
    assert.equal(20, own)
  end)

  it("a call made from a timer returns across a reload", function()
    local started = request(n.port, "GET", "/timer?policy=from-timer").json
    assert.equal("from-timer", started.started)
    assert.is_true(life.arrived(srv, TOKEN, 1) >= 1, "the timer's call did not reach the mock")
    life.signal(n, "reload")
    -- the shared dict outlives the reload; the new worker reads it
    local result = helpers.eventually(function()
      local r = request(n.port, "GET", "/result?policy=from-timer").json.result
      return r ~= "nil", r
    end, 250)
    assert.equal("from-timer", result)
    assert.is_true(life.gone(started.pid), "the timer's worker still runs")
  end)
end)

describe("nginx quit (graceful shutdown) #nginx", function()
  local root = nginx_server.root_dir(debug.getinfo(1, "S").source)
  local TOKEN = uid("tok-quit") .. ";hold=1"
  local srv, n

  setup(function()
    nginx_server.prepare(root)
    srv = server.start()
    n = life.start(root, { threads = THREADS }, TOKEN, srv.base)
  end)

  teardown(function()
    if n then n:stop() end
    if srv then srv:stop() end
  end)

  it("20 calls in flight across nginx -s quit: each client gets its own answer, then nginx ends", function()
    local conns = life.fire(n.port, "quit-", 20)
    assert.is_true(life.arrived(srv, TOKEN, THREADS) >= THREADS, "the calls did not reach the mock")
    life.signal(n, "quit")
    local own, others = life.tally(conns, "quit-")
    print(("\n  nginx: quit with 20 calls in flight: %d of 20 answered with their own result"):format(own))
    assert.same({}, others)
    assert.equal(20, own)
    assert.is_true(life.gone(n.pid), "nginx still runs after quit")
  end)
end)
