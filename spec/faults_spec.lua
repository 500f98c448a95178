-- The fault matrix: every fault of the mock server against every call of
-- cachectl.core, each pair its own test; then recovery on retry, Retry-After
-- past the deadline, timeouts, TLS and the client-side rate limit.
-- Timeouts are short and retries few, so the file runs in well under a minute.
-- Waits are checked by what the call reports through on_event (their order,
-- reason and length), never by timing the call.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local tls = require "support.tls"
local core = require "cachectl.core"

local uid, recorder, shape, merge = helpers.uid, helpers.recorder, helpers.shape, helpers.merge

-- The three calls, with what each needs besides its credential.
local CALLS = {
  { name = "modelslab.clear_cache", fn = core.modelslab.clear_cache, cred = "key",
    path = "/api/v5/clear_cache" },
  { name = "modelslab.clear_queue", fn = core.modelslab.clear_queue, cred = "key",
    path = "/api/v1/enterprise/3d/clear_queue" },
  { name = "omni.reset_cache", fn = core.omni.reset_cache, cred = "token",
    path = "/api/v1/models/" .. helpers.UUID .. "/cache_reset/daily",
    extra = { model_id = helpers.UUID, policy = "daily" } },
}

-- What each fault ends in. `opts` are the call's options for the fault;
-- `attempts` is also the number of requests the mock must have seen.
local MATRIX = {
  { fault = "refuse", kind = "connect", attempts = 2, opts = { retries = 1 } },
  { fault = "drop", kind = "connect", attempts = 2, opts = { retries = 1 } },
  { fault = "drop_mid_body", kind = "connect", attempts = 2, opts = { retries = 1 } },
  { fault = "stall", kind = "timeout", attempts = 1, opts = { timeout = 1 } },
  { fault = "stall_mid_body", kind = "timeout", attempts = 1, opts = { timeout = 1 } },
  { fault = "trickle", kind = "timeout", attempts = 1, opts = { timeout = 1 } },
  { fault = "429", kind = "rate_limited", status = 429, retry_after = 1, attempts = 1 },
  { fault = "429_no_retry_after", kind = "rate_limited", status = 429, retry_after = false, attempts = 2,
    opts = { retries = 1 } },
  { fault = "429_retry_after_body", kind = "rate_limited", status = 429, retry_after = 1, attempts = 1 },
  { fault = "429_http_date", kind = "rate_limited", status = 429, retry_after = "date", attempts = 1 },
  { fault = "500_html", kind = "http", status = 500, attempts = 1, opts = { retries = 2 } },
  { fault = "502", kind = "http", status = 502, attempts = 2, opts = { retries = 1 } },
  { fault = "503", kind = "http", status = 503, attempts = 3, opts = { retries = 2 } },
  { fault = "504", kind = "http", status = 504, attempts = 2, opts = { retries = 1 } },
  { fault = "503_retry_after", kind = "http", status = 503, retry_after = 1, attempts = 2,
    opts = { retries = 1 }, waits = 1 },
  { fault = "invalid_json", kind = "decode", status = 200, attempts = 1, opts = { retries = 2 } },
  { fault = "empty", kind = "decode", status = 200, attempts = 1, opts = { retries = 2 } },
  { fault = "huge", kind = "too_large", status = 200, attempts = 1, opts = { retries = 2 } },
  { fault = "redirect", kind = "http", status = 302, attempts = 1, opts = { retries = 2 } },
  { fault = "api_error", kind = "api", status = 200, attempts = 1, opts = { retries = 2 },
    message = "Something failed", code = "E42" },
  { fault = "html200", kind = "decode", status = 200, attempts = 1, opts = { retries = 2 } },
}

-- Faults that a retry gets past, and the options that leave room for it.
local RECOVERABLE = {
  refuse = {}, drop = {}, drop_mid_body = {}, ["429"] = {}, ["429_no_retry_after"] = {},
  ["429_retry_after_body"] = {}, ["429_http_date"] = { timeout = 5 }, ["502"] = {}, ["503"] = {},
  ["504"] = {}, ["503_retry_after"] = {},
}

-- Runs `call` with its credential, the server's base URL, retries = 0 and a
-- 5 s timeout, overridden by `over`.
local function run(call, base, cred, over)
  local o = merge({ [call.cred] = cred, base_url = base, retries = 0, timeout = 5 }, call.extra)
  return call.fn(merge(o, over))
end

-- What every error is, whatever its kind: nil result, the kind, a message,
-- one line from tostring, and never the credential.
local function assert_error(kind, cred, res, err)
  assert.is_nil(res)
  assert.is_table(err, "expected an error, got a result")
  assert.equal(kind, err.kind, "kind (" .. tostring(err) .. ")")
  assert.is_string(err.message)
  assert.is_true(#err.message > 0)
  local line = tostring(err)
  assert.is_nil(line:find("[\r\n]"))
  assert.is_nil(helpers.find_secret(err, cred))
  assert.is_nil(line:find(cred, 1, true))
  return err
end

describe("faults #slow", function()
  local srv = server.use()

  -- A first call leaves a kept-alive connection to the mock, as any call but
  -- the first of a process finds; then the log is cleared.
  local function warm(call)
    assert.is_table((run(call, srv.base, uid("warm"))))
    srv:reset()
  end

  describe("matrix:", function()
    for _, call in ipairs(CALLS) do
      for _, case in ipairs(MATRIX) do
        it(case.fault .. " against " .. call.name .. " ends in " .. case.kind, function()
          warm(call)
          local cred, events = uid("cred") .. " fault=" .. case.fault, {}
          local opts = merge({ on_event = recorder(events) }, case.opts)
          local err = assert_error(case.kind, cred, run(call, srv.base, cred, opts))
          assert.equal(case.status, err.status)
          assert.equal(case.attempts, err.attempts)
          if case.retry_after == false then
            assert.is_nil(err.retry_after)
          elseif case.retry_after == "date" then
            -- an HTTP date 2 s ahead, whole seconds: 1 to 2 s from now
            assert.is_number(err.retry_after)
            assert.is_true(err.retry_after > 0 and err.retry_after <= 3, "retry_after " .. err.retry_after)
          elseif case.retry_after then
            assert.equal(case.retry_after, err.retry_after)
          end
          if case.message then assert.equal(case.message, err.message) end
          if case.code then assert.equal(case.code, err.code) end
          local reqs = srv:requests()
          assert.equal(case.attempts, #reqs)
          for _, r in ipairs(reqs) do assert.equal(call.path, r.path) end
          if case.waits then
            -- the retry waited for the Retry-After
            assert.same({ "attempt", "wait/retry_after", "attempt" }, shape(events))
            assert.equal(case.waits, events[2].wait)
          end
        end)
      end
    end
  end)

  describe("recovery:", function()
    for _, call in ipairs(CALLS) do
      for _, case in ipairs(MATRIX) do
        local over = RECOVERABLE[case.fault]
        if over then
          it(case.fault .. " once, then " .. call.name .. " succeeds on its retry", function()
            local cred = uid("cred") .. " fault=" .. case.fault .. " times=1"
            local res, err = run(call, srv.base, cred, merge({ retries = 1 }, over))
            assert.is_nil(err, err and tostring(err))
            assert.is_table(res)
            if call.cred == "key" then
              assert.equal("success", res.status)
            else
              assert.is_true(res.success)
              assert.equal("daily", res.cache_reset.policy_name)
            end
            local reqs = srv:requests()
            assert.equal(2, #reqs)
            assert.equal(call.path, reqs[1].path)
            assert.equal(call.path, reqs[2].path)
          end)
        end
      end
    end
  end)

  describe("retries", function()
    -- The jittered backoff after a first attempt is at most 0.5 s (base 0.5 s).
    for _, call in ipairs(CALLS) do
      it("wait the backoff, not longer (" .. call.name .. ")", function()
        warm(call)
        local cred, events = uid("cred") .. " fault=503 times=1", {}
        local res, err = run(call, srv.base, cred, { retries = 1, on_event = recorder(events) })
        assert.is_nil(err, err and tostring(err))
        assert.is_table(res)
        assert.equal(2, #srv:requests())
        assert.same({ "attempt", "wait/backoff", "attempt" }, shape(events))
        local wait = events[2].wait
        assert.is_true(wait >= 0 and wait <= 0.5, "waited " .. wait .. " s")
      end)
    end

    -- restart_server is never retried: one call, one request, even when the
    -- server drops a kept-alive connection without answering.
    for _, fault in ipairs{ "drop", "refuse" } do
      it("never resend a call that is not idempotent (restart_server, " .. fault .. ")", function()
        warm(CALLS[1])
        local cred = uid("cred") .. " fault=" .. fault
        local res, err = core.modelslab.restart_server{ key = cred, base_url = srv.base, retries = 2 }
        assert_error("connect", cred, res, err)
        assert.equal(1, err.attempts)
        assert.equal(1, #srv:requests())
      end)
    end
  end)

  describe("a redirect", function()
    for _, call in ipairs(CALLS) do
      it("is not followed (" .. call.name .. ")", function()
        local cred = uid("cred") .. " fault=redirect"
        local err = assert_error("http", cred, run(call, srv.base, cred))
        assert.equal(302, err.status)
        local reqs = srv:requests()
        assert.equal(1, #reqs)
        assert.equal(0, #helpers.requests_under(reqs, "/redirect-target"))
      end)
    end
  end)

  describe("a Retry-After past the deadline", function()
    for _, call in ipairs(CALLS) do
      for _, fault in ipairs{ "429", "429_http_date", "503_retry_after" } do
        it("ends " .. call.name .. " at once on " .. fault .. " (timeout 0.5)", function()
          local cred = uid("cred") .. " fault=" .. fault
          local res, err = run(call, srv.base, cred, { timeout = 0.5, retries = 2 })
          assert_error("rate_limited", cred, res, err)
          assert.equal(fault == "503_retry_after" and 503 or 429, err.status)
          assert.is_number(err.retry_after)
          assert.is_true(err.retry_after >= 0.5)
          assert.equal(1, err.attempts)
          assert.equal(1, #srv:requests())
        end)
      end
    end
  end)

  describe("the client-side rate limit", function()
    for _, call in ipairs(CALLS) do
      it("makes " .. call.name .. " wait for its slot instead of failing", function()
        local cred, events = uid("cred"), {}
        for i = 1, 4 do
          local res, err = run(call, srv.base, cred, { rate_limit = { requests = 2, per = 1 },
                                                       on_event = recorder(events) })
          assert.is_nil(err, err and ("call " .. i .. ": " .. tostring(err)))
          assert.is_table(res)
        end
        assert.equal(4, #srv:requests())
        -- two starts at once, then the third waits for the first to leave the window
        local seen = shape(events)
        assert.same({ "attempt", "attempt", "wait/rate_limit", "attempt" }, { seen[1], seen[2], seen[3], seen[4] })
        assert.is_true(events[3].wait > 0 and events[3].wait <= 1, "waited " .. events[3].wait .. " s")
      end)

      it("fails " .. call.name .. " at once when the slot lies past the timeout", function()
        local cred = uid("cred")
        local limit = { requests = 1, per = 10 }
        assert.is_table((run(call, srv.base, cred, { rate_limit = limit })))
        local events = {}
        local res, err = run(call, srv.base, cred, { rate_limit = limit, timeout = 1, on_event = recorder(events) })
        assert_error("rate_limited", cred, res, err)
        assert.equal(0, err.attempts)
        assert.is_nil(err.status)
        assert.is_number(err.retry_after)
        assert.is_true(err.retry_after > 1, "retry_after " .. err.retry_after)
        assert.equal(1, #srv:requests())
        assert.equal(0, #events)        -- ended at once: no wait, no attempt
      end)
    end
  end)

  describe("over HTTPS", function()
    local secure = server.use_tls()

    it("serves https", function()
      assert.matches("^https://127%.0%.0%.1:%d+/api$", secure.base)
    end)

    for _, call in ipairs(CALLS) do
      it("refuses an unknown CA with kind tls, unretried (" .. call.name .. ")", function()
        local cred = uid("cred")
        local err = assert_error("tls", cred, run(call, secure.base, cred, { retries = 2 }))
        assert.is_nil(err.status)
        assert.equal(1, err.attempts)
        assert.equal(0, #secure:requests())
      end)

      it("succeeds with ca_file naming the test CA (" .. call.name .. ")", function()
        local res, err = run(call, secure.base, uid("cred"), { ca_file = secure.ca })
        assert.is_nil(err, err and tostring(err))
        assert.is_table(res)
        local reqs = secure:requests()
        assert.equal(1, #reqs)
        assert.equal(call.path, reqs[1].path)
      end)

      it("succeeds with verify_tls = false (" .. call.name .. ")", function()
        local res, err = run(call, secure.base, uid("cred"), { verify_tls = false })
        assert.is_nil(err, err and tostring(err))
        assert.is_table(res)
        assert.equal(1, #secure:requests())
      end)
    end

    it("checks the host name against the certificate (localhost is in it)", function()
      local port = secure.url:match(":(%d+)$")
      local res, err = run(CALLS[1], "https://localhost:" .. port .. "/api", uid("cred"), { ca_file = secure.ca })
      assert.is_nil(err, err and tostring(err))
      assert.equal("success", res.status)
    end)

    it("is tls when ca_file names a CA that did not sign the server", function()
      local other = tls.make()
      local cred = uid("cred")
      local ok, res, err = pcall(run, CALLS[1], secure.base, cred, { ca_file = other.ca })
      other:cleanup()
      assert.is_true(ok, res)
      assert_error("tls", cred, res, err)
    end)
  end)
end)
