-- Bursts in a real nginx configured as docs/nginx.md says: every
-- ngx.run_worker_thread task takes a Lua VM of the worker's VM pool
-- (lua_worker_thread_vm_pool_size) until it returns; calls beyond what the
-- pool can take wait for a VM, within their timeout, instead of failing
-- with "no available Lua vm"; and the worker's descriptors after a burst
-- stay within what the docs say: at most 3 per VM (libcurl's wakeup pair
-- and the kept-alive connection to the one service host) beyond its own.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local nginx_server = require "support.nginx_server"
local life = require "support.nginx_life"

local uid = helpers.uid
local request = nginx_server.request

local BURST = 130

-- One burst of BURST calls on the single worker of `n`: every answer the
-- caller's own; prints and returns the worker's descriptors and memory
-- before and after.
local function burst(n, label, prefix)
  local worker = life.workers(n.pid)[1]
  assert.is_number(request(n.port, "GET", "/warmed").json.warmed)
  local fds0, rss0 = life.fds(worker), life.rss_kb(worker)
  local own, others = life.tally(life.fire(n.port, prefix, BURST), prefix)
  local fds1, rss1 = life.fds(worker), life.rss_kb(worker)
  print(("\n  nginx: %s: %d of %d answered with their own result; worker descriptors %d -> %d, memory %.1f -> %.1f MB")
    :format(label, own, BURST, fds0, fds1, rss0 / 1024, rss1 / 1024))
  assert.same({}, others)
  assert.equal(BURST, own)
  return fds0, fds1
end

describe("nginx bursts #nginx", function()
  local root = nginx_server.root_dir(debug.getinfo(1, "S").source)
  local TOKEN = uid("tok-burst") .. ";hold=0.2"
  local srv

  setup(function()
    nginx_server.prepare(root)
    srv = server.start()
  end)

  teardown(function() if srv then srv:stop() end end)

  describe("a VM pool of 8 and vms = 8, as docs/nginx.md says", function()
    local n
    setup(function() n = life.start(root, { threads = 8, vm_pool = 8 }, TOKEN, srv.base) end)
    teardown(function() if n then n:stop() end end)

    it("130 calls at once on one worker are all answered; descriptors stay within 3 per VM", function()
      local before, after = burst(n, "130 calls, VM pool 8, vms 8", "small-")
      assert.is_true(after <= before + 8 * 3, ("%d descriptors after the burst, %d before"):format(after, before))
      local _, again = burst(n, "the same again", "again-")
      assert.is_true(again <= before + 8 * 3, ("%d descriptors after the second burst"):format(again))
      assert.is_nil(n:logs():find("no available Lua vm", 1, true))
    end)

    it("a call that gets no VM within its timeout ends with a timeout error, never a 500", function()
      local waited = 0
      for _, c in ipairs(life.fire(n.port, "late-", 30, "&timeout=0.1")) do
        local res = nginx_server.receive(c)
        assert.equal(200, res.status, res.body)
        assert.equal("timeout", res.json.kind, res.body)
        if res.json.message:find("no worker-thread Lua VM came free", 1, true) then waited = waited + 1 end
      end
      assert.is_true(waited > 0, "no call waited for a VM")
    end)
  end)

  describe("lua_check_client_abort on, vms = 2", function()
    local n
    setup(function()
      n = life.start(root, { threads = 4, vms = 2, client_abort = true }, uid("tok-abort") .. ";hold=1", srv.base)
    end)
    teardown(function() if n then n:stop() end end)

    -- The aborted requests' light threads are killed in the middle of their
    -- calls; the slots they held come back (through the collector) to the
    -- calls that wait.
    it("calls whose clients went away give their VM slots back to the calls that wait", function()
      assert.is_number(request(n.port, "GET", "/warmed").json.warmed)
      local gone = life.fire(n.port, "gone-", 2)
      assert.is_true(life.arrived(srv, n.token, 2) >= 2, "the calls did not reach the mock")
      for _, c in ipairs(gone) do c:close() end
      local own, others = life.tally(life.fire(n.port, "next-", 2, "&timeout=10"), "next-")
      assert.same({}, others)
      assert.equal(2, own)
    end)

    it("a request whose light thread making a call is killed ends, and its slot comes back", function()
      for i = 1, 2 do
        local res = request(n.port, "GET", "/kill?policy=killed-" .. i)
        assert.is_true(res.json.killed, res.body)
      end
      local own, others = life.tally(life.fire(n.port, "after-kill-", 2, "&timeout=10"), "after-kill-")
      assert.same({}, others)
      assert.equal(2, own)
    end)
  end)

  describe("a VM pool of 8 with vms left at its default (100)", function()
    local n
    setup(function() n = life.start(root, { threads = 8, vm_pool = 8, vms = false }, TOKEN, srv.base) end)
    teardown(function() if n then n:stop() end end)

    it("130 calls at once are all answered: a call nginx refuses a VM waits for one", function()
      local before, after = burst(n, "130 calls, VM pool 8, vms 100", "over-")
      assert.is_true(after <= before + 8 * 3, ("%d descriptors after the burst, %d before"):format(after, before))
    end)

    it("configure and warm raise, naming the setting, on numbers out of range", function()
      local errors = request(n.port, "GET", "/misuse").json.errors
      assert.equal(16, #errors)
      for i = 1, 14, 2 do
        assert.matches("cachectl.openresty.configure: vms must be a whole number from 1 to 100000",
          errors[i], 1, true)
        assert.matches("cachectl.openresty.warm: threads must be a whole number from 1 to 100000",
          errors[i + 1], 1, true)
      end
      assert.matches("set vms before the worker's first call", errors[15], 1, true)
      assert.matches("unknown option 'threads'", errors[16], 1, true)
    end)
  end)

  describe("nginx's default VM pool (100) and vms (100)", function()
    local n
    setup(function() n = life.start(root, { threads = 32, vms = false }, uid("tok-burst") .. ";hold=1", srv.base) end)
    teardown(function() if n then n:stop() end end)

    it("130 calls at once are all answered; descriptors stay within 3 per VM", function()
      local before, after = burst(n, "130 calls, default VM pool, 32 threads", "default-")
      assert.is_true(after <= before + 100 * 3, ("%d descriptors after the burst, %d before"):format(after, before))
    end)
  end)
end)
