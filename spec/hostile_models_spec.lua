-- Issue 21, bullets 3 and 8: omni:models against a server whose paging
-- loops (A -> B -> A) or whose records are odd: paging stops on any cursor
-- already seen, pages of 100 are asked for unless page_size says otherwise,
-- a `records` that is not a list is decode, and records are kept one per
-- string id (the others skipped with a `skipped` event).
local hostile = require "support.hostile_server"
local helpers = require "support.helpers"
local cachectl = require "cachectl"

local function page(records, next_cursor)
  return { records = records, pageInfo = { hasNextPage = next_cursor ~= nil, nextCursor = next_cursor } }
end

local function ids_of(list)
  local out = {}
  for i, r in ipairs(list) do out[i] = r.id end
  return out
end

local function query_of(arrival)
  local out = {}
  for k, v in (arrival.path:match("%?(.*)$") or ""):gmatch("([^&=]+)=([^&]*)") do
    out[k] = helpers.percent_decode(v)
  end
  return out
end

describe("omni:models against a hostile server", function()
  local srv

  setup(function() srv = hostile.start() end)
  teardown(function() if srv then srv:stop() end end)

  local function client(pages, opts)
    srv:script{ pages = pages }
    return cachectl.omni.new(helpers.merge({ token = helpers.uid("tok-models"), base_url = srv.base,
      rate_limit = false }, opts))
  end

  describe("paging", function()
    it("stops on a cursor already seen (A -> B -> A): three requests, no duplicates", function()
      local c = client{
        [""] = page({ { id = "a" } }, "A"),
        A = page({ { id = "b" } }, "B"),
        B = page({ { id = "c" } }, "A"),
      }
      assert.same({ "a", "b", "c" }, ids_of(assert(c:models())))
      local log = srv:log()
      assert.equal(3, #log)
      assert.same({ nil, "A", "B" }, { query_of(log[1]).cursor, query_of(log[2]).cursor, query_of(log[3]).cursor })
      c:close()
    end)

    it("stops on a cursor that comes back to the one it was given", function()
      local c = client{ A = page({ { id = "b" } }, "B"), B = page({ { id = "c" } }, "A") }
      assert.same({ "b", "c" }, ids_of(assert(c:models{ cursor = "A" })))
      assert.equal(2, #srv:log())
      c:close()
    end)

    it("a server that always answers the same page with the same cursor: two requests", function()
      local c = client{ ["*"] = page({ { id = "a" } }, "same") }
      assert.same({ "a" }, ids_of(assert(c:models())))
      assert.equal(2, #srv:log())
      c:close()
    end)

    it("asks for pages of 100 records, or of page_size", function()
      local c = client{ [""] = page({ { id = "a" } }, "A"), A = page({ { id = "b" } }) }
      assert(c:models())
      for _, arrival in ipairs(srv:log()) do assert.equal("100", query_of(arrival).pageSize) end
      srv:reset()
      assert(c:models{ page_size = 7 })
      for _, arrival in ipairs(srv:log()) do assert.equal("7", query_of(arrival).pageSize) end
      assert.equal(2, #srv:log())
      srv:reset()
      local _, bad = c:models{ page_size = 0 }
      assert.equal("invalid", bad.kind)
      assert.equal("page_size", bad.field)
      assert.same({}, srv:log())
      c:close()
    end)

    it("refuses records that are not a list, or none, as decode with the requests counted", function()
      for _, records in ipairs{ { x = { id = "a" } }, "records", 42 } do
        local c = client{ [""] = page({ { id = "a" } }, "A"), A = { records = records, pageInfo = {} } }
        local res, err = c:models()
        assert.is_nil(res)
        assert.equal("decode", err.kind)
        assert.equal("page 2 of the model list holds records that are not a list", err.message)
        assert.equal(2, err.attempts)
        c:close()
      end
      local c = client{ [""] = { pageInfo = {} } }
      local _, err = c:models()
      assert.equal("page 1 of the model list holds no records", err.message)
      assert.equal(1, err.attempts)
      c:close()
    end)
  end)

  describe("odd records", function()
    it("skips a record without a string id, and collapses duplicates by id, each with an event", function()
      local events, on_event = helpers.collector()
      local c = client({
        [""] = page({ { id = "a", name = "A" }, { name = "no id" }, { id = 5, name = "number" }, { id = "" },
                      "not a record", { id = "a", name = "again" } }, "A"),
        A = page({ { id = "b", name = "B" }, { id = "a", name = "third" } }),
      }, { on_event = on_event })
      local list = assert(c:models())
      assert.same({ "a", "b" }, ids_of(list))
      assert.equal("A", list[1].name)
      local skipped = helpers.of_type(events, "skipped")
      local reasons = {}
      for i, ev in ipairs(skipped) do
        reasons[i] = ev.reason
        assert.equal("omni", ev.service)
        assert.equal("list_models", ev.call)
      end
      assert.same({ "no_id", "no_id", "no_id", "no_id", "duplicate", "duplicate" }, reasons)
      assert.equal("page 1, record 2: no id (a non-empty string)", skipped[1].message)
      assert.equal("page 2, record 2: the id of an earlier record", skipped[6].message)
      c:close()
    end)

    it("counts only the records kept against limit", function()
      local c = client{
        [""] = page({ { id = "a" }, { id = "a" }, { name = "x" } }, "A"),
        A = page({ { id = "b" }, { id = "c" } }),
      }
      assert.same({ "a", "b" }, ids_of(assert(c:models{ limit = 2 })))
      c:close()
    end)
  end)
end)
