/* policies.c — an Omni model file's cache policies (core.model_policies)
 * and the check of a policy name against them (core.policy_check).
 *
 * The file is read by yaml.c within its limits and deadline, into its node
 * tree; here that tree is walked for what a model file declares, and its
 * shapes are checked: a `cache_policies` list is never read as policies
 * named 1, 2. Messages name what was found, never the text, except for a
 * policy name, cut at SHOWN_BYTES (the Lua layer scrubs them of secrets and
 * puts them on one line). */
#include <stdarg.h>
#include "cachectl.h"

#define SHOWN_NAMES 10               /* names a refusal lists */
#define SHOWN_BYTES 64               /* bytes of a name a message shows */
#define SUGGEST_BYTES (256 * 1024)   /* bytes of names the search for a suggestion compares */
#define SUGGEST_EDITS 2              /* edits between a name and the one suggested */

/* ------------------------------------------------------------ the tree */

static int is_null(lua_State *L, int idx)
{
    int yes;
    lua_getfield(L, LUA_REGISTRYINDEX, CC_YAML_NULL);
    yes = lua_rawequal(L, idx, -1);
    lua_pop(L, 1);
    return yes;
}

/* Whether the value at idx is a node with that part: "values" (a mapping)
 * or "items" (a sequence). */
static int is_node(lua_State *L, int idx, const char *part)
{
    int yes;
    if (lua_type(L, idx) != LUA_TTABLE) return 0;
    lua_getfield(L, idx, part);
    yes = !lua_isnil(L, -1);
    lua_pop(L, 1);
    return yes;
}

/* Pushes the value of a mapping's key that is a plain name, or nil. */
static void value_of(lua_State *L, int map, const char *key)
{
    lua_getfield(L, map, "values");
    lua_getfield(L, -1, key);
    lua_remove(L, -2);
}

/* A walk over a mapping: its own keys in the document's order, then those
 * merge keys brought in that no later key replaced. */
typedef struct walk { int map, merged; lua_Integer i; } walk;

/* Pushes the next key and its value; 0 (nothing pushed) at the end. */
static int next_pair(lua_State *L, walk *w)
{
    for (;;) {
        int skip = 0;
        lua_getfield(L, w->map, w->merged ? "merged" : "own");
        lua_rawgeti(L, -1, (int)++w->i);
        lua_remove(L, -2);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            if (w->merged) return 0;
            w->merged = 1;
            w->i = 0;
            continue;
        }
        cc_yaml_push_slot(L, -1);
        if (w->merged) {
            lua_getfield(L, w->map, "from_merge");
            lua_pushvalue(L, -2);
            lua_rawget(L, -2);
            skip = !lua_toboolean(L, -1);
            lua_pop(L, 2);
        }
        if (skip) {
            lua_pop(L, 2);
            continue;
        }
        lua_getfield(L, w->map, "values");
        lua_insert(L, -2);
        lua_rawget(L, -2);
        lua_remove(L, -2);
        return 1;
    }
}

/* ------------------------------------------------------------ messages */

/* Pushes the string at idx as a message shows it: cut after SHOWN_BYTES
 * (at a character's start), "..." marking the cut. */
static void push_shown(lua_State *L, int idx)
{
    size_t n, cut = SHOWN_BYTES;
    const char *s = lua_tolstring(L, idx, &n);
    if (n <= SHOWN_BYTES) {
        lua_pushvalue(L, idx);
    } else {
        while (cut > 1 && ((unsigned char)s[cut] & 0xC0) == 0x80) cut--;
        lua_pushlstring(L, s, cut);
        lua_pushliteral(L, "...");
        lua_concat(L, 2);
    }
}

/* What the value at idx is, for a message: never a string's text (a number
 * or a boolean is shown, pushed). */
static const char *what(lua_State *L, int idx)
{
    if (is_node(L, idx, "values")) return "a mapping";
    if (is_node(L, idx, "items")) return "a list";
    if (is_null(L, idx)) return "null";
    if (lua_type(L, idx) == LUA_TSTRING) return "a string";
    if (lua_type(L, idx) == LUA_TBOOLEAN)
        return lua_pushfstring(L, "a boolean (%s)", lua_toboolean(L, idx) ? "true" : "false");
    lua_pushvalue(L, idx);
    return lua_pushfstring(L, "a %s (%s)", luaL_typename(L, idx), lua_tostring(L, -1));
}

/* Returns nil, the message and "shape" (pushed). */
static int refuse(lua_State *L, const char *fmt, ...)
{
    va_list ap;
    lua_pushnil(L);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_pushliteral(L, "shape");
    return 3;
}

/* Returns nil, before .. the name at idx (shown) .. after, and "shape": a
 * name may hold any byte, a NUL included. */
static int refuse_name(lua_State *L, const char *before, int idx, const char *after)
{
    lua_pushnil(L);
    lua_pushstring(L, before);
    push_shown(L, idx);
    lua_pushstring(L, after);
    lua_concat(L, 3);
    lua_pushliteral(L, "shape");
    return 3;
}

/* ------------------------------------------------------------ the policies */

/* Pushes one policy: its name and its plain attributes (a collection is
 * left out). */
static void push_policy(lua_State *L, int name, int attrs)
{
    walk w = { 0, 0, 0 };
    w.map = attrs;
    lua_newtable(L);
    if (!is_null(L, attrs)) {
        while (next_pair(L, &w)) {
            int t = lua_type(L, -1);
            if (lua_type(L, -2) == LUA_TSTRING && (t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN))
                lua_rawset(L, -3);
            else
                lua_pop(L, 2);
        }
    }
    lua_pushvalue(L, name);
    lua_setfield(L, -2, "name");
}

/* The policies of the cache_policies value at idx, in the file's order, into
 * the list at out, each name set in names: 0, or the refusal's 3 values. */
static int read_policies(lua_State *L, int declared, int out, int names)
{
    walk w = { 0, 0, 0 };
    int n = 0;
    if (lua_isnil(L, declared) || is_null(L, declared)) return 0;
    if (!is_node(L, declared, "values"))
        return refuse(L, "cache_policies is %s, not a mapping of names to policies", what(L, declared));
    w.map = declared;
    while (next_pair(L, &w)) {
        int name = lua_gettop(L) - 1, attrs = name + 1;
        if (lua_type(L, name) != LUA_TSTRING)
            return refuse(L, "cache_policies holds a name that is %s, not a string", what(L, name));
        if (!is_null(L, attrs) && !is_node(L, attrs, "values"))
            return refuse_name(L, "cache policy '", name,
                               lua_pushfstring(L, "' is %s, not a mapping of attributes", what(L, attrs)));
        push_policy(L, name, attrs);
        lua_rawseti(L, out, ++n);
        lua_pushvalue(L, name);
        lua_pushboolean(L, 1);
        lua_rawset(L, names);
        lua_settop(L, name - 1);
    }
    return 0;
}

/* core.model_policies(text [, limits [, deadline [, clock]]]): the list
 * `{ {name = ..., <plain attributes>}, ..., default = name }` in the file's
 * order (names brought in by a merge key after the file's own), {} for an
 * empty document; or nil, what is wrong (never the text) and why ("limit",
 * "shape", "syntax", "memory" or "timeout"). The arguments are yaml.c's. */
int cc_model_policies_l(lua_State *L)
{
    int rc;
    luaL_checkstring(L, 1);
    lua_settop(L, 4);
    /* called, not lua_call'ed: its argument errors then name this function
     * (a raise of the clock goes through) */
    if (cc_yaml_load_l(L) != 1) return 3;   /* nil, why, reason */
    lua_replace(L, 1);
    lua_settop(L, 1);
    luaL_checkstack(L, 24, "model_policies");
    if (is_null(L, 1)) {
        lua_newtable(L);
        return 1;
    }
    if (!is_node(L, 1, "values")) return refuse(L, "the model file is %s, not a mapping", what(L, 1));
    lua_newtable(L);                        /* 2: the list */
    lua_newtable(L);                        /* 3: the names declared */
    value_of(L, 1, "cache_policies");
    if ((rc = read_policies(L, 4, 2, 3)) != 0) return rc;
    value_of(L, 1, "default_cache_policy");
    if (!lua_isnil(L, 5) && !is_null(L, 5)) {
        if (lua_type(L, 5) != LUA_TSTRING) return refuse(L, "default_cache_policy is %s, not a name", what(L, 5));
        lua_pushvalue(L, 5);
        lua_rawget(L, 3);
        if (lua_isnil(L, -1))
            return refuse_name(L, "default_cache_policy '", 5, "' is not declared in cache_policies");
        lua_pushvalue(L, 5);
        lua_setfield(L, 2, "default");
    }
    lua_settop(L, 2);
    return 1;
}

/* ------------------------------------------------------------ the check */

/* Pushes the name of policy i of the list at 2: a string, or it raises
 * naming the argument. */
static const char *name_at(lua_State *L, int i, size_t *len)
{
    lua_rawgeti(L, 2, i);
    if (!lua_istable(L, -1)) luaL_argerror(L, 2, lua_pushfstring(L, "policy %d is not a table", i));
    lua_getfield(L, -1, "name");
    lua_remove(L, -2);
    /* a string only: a number would be compared as text here but not in the match */
    if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 2, "a policy without a name");
    return lua_tolstring(L, -1, len);
}

/* The Levenshtein distance between a and b, or limit + 1 when it exceeds
 * limit. Only the cells within limit of the diagonal are computed: a few per
 * byte, whatever the names a server sent. prev and cur: lb + 1 cells each. */
static size_t distance(const char *a, size_t la, const char *b, size_t lb, size_t limit, size_t *prev,
                       size_t *cur)
{
    size_t over = limit + 1, i, j;
    if (la > lb + limit || lb > la + limit) return over;
    for (j = 0; j <= lb; j++) prev[j] = j <= limit ? j : over;
    for (i = 1; i <= la; i++) {
        size_t lo = i > limit ? i - limit : 1, hi = i + limit < lb ? i + limit : lb, best, *swap;
        cur[lo - 1] = lo == 1 && i < over ? i : over;     /* the band's edges */
        if (hi < lb) cur[hi + 1] = over;
        best = cur[lo - 1];
        for (j = lo; j <= hi; j++) {
            size_t d = prev[j - 1] + (a[i - 1] != b[j - 1]);
            if (prev[j] + 1 < d) d = prev[j] + 1;
            if (cur[j - 1] + 1 < d) d = cur[j - 1] + 1;
            if (d > over) d = over;
            cur[j] = d;
            if (d < best) best = d;
        }
        if (best > limit) return over;
        swap = prev;
        prev = cur;
        cur = swap;
    }
    return prev[lb];
}

/* The index (in the list at 2, n policies) of the declared name nearest to
 * the name (at 1), within SUGGEST_EDITS; the first in the file's order on a
 * tie; 0 when none. The search compares at most SUGGEST_BYTES bytes of names
 * (a server may declare thousands of long ones). */
static int nearest(lua_State *L, int n)
{
    size_t len, spent = 0, best_d = SUGGEST_EDITS + 1;
    const char *name = lua_tolstring(L, 1, &len);
    size_t *rows = (size_t *)cc_newuserdata(L, 2 * (len + SUGGEST_EDITS + 1) * sizeof *rows);
    int i, best = 0;
    for (i = 1; i <= n; i++) {
        size_t m, d;
        const char *s = name_at(L, i, &m);
        if (m + SUGGEST_EDITS >= len && m <= len + SUGGEST_EDITS) {
            spent += m;
            if (spent > SUGGEST_BYTES) {
                lua_pop(L, 1);
                break;
            }
            d = distance(name, len, s, m, SUGGEST_EDITS, rows, rows + len + SUGGEST_EDITS + 1);
            if (d < best_d) {
                best = i;
                best_d = d;
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return best;
}

/* core.policy_check(name, policies, model_id): true when the policies (as
 * model_policies returns them) declare name; else nil and the message that
 * refuses it, with the nearest declared name, the first SHOWN_NAMES names
 * and a count of the rest. The caller scrubs the message (names come from
 * a server). */
int cc_policy_check_l(lua_State *L)
{
    int i, n, near;
    luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checkstring(L, 3);
    lua_settop(L, 3);
    n = (int)cc_rawlen(L, 2);
    for (i = 1; i <= n; i++) {
        name_at(L, i, NULL);                /* a policy and its name checked */
        if (lua_rawequal(L, -1, 1)) {
            lua_pushboolean(L, 1);
            return 1;
        }
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    lua_pushliteral(L, "no cache policy '");
    push_shown(L, 1);
    lua_pushliteral(L, "' in model ");
    lua_pushvalue(L, 3);
    lua_concat(L, 4);
    if (n == 0) {
        lua_pushliteral(L, ": its model file declares none");
        lua_concat(L, 2);
        return 2;
    }
    if ((near = nearest(L, n)) > 0) {
        lua_pushliteral(L, "; did you mean '");
        name_at(L, near, NULL);
        push_shown(L, -1);
        lua_remove(L, -2);
        lua_pushliteral(L, "'?");
        lua_concat(L, 4);
    }
    lua_pushliteral(L, " (known: ");
    lua_concat(L, 2);
    for (i = 1; i <= n && i <= SHOWN_NAMES; i++) {
        if (i > 1) lua_pushliteral(L, ", ");
        name_at(L, i, NULL);
        push_shown(L, -1);
        lua_remove(L, -2);
        lua_concat(L, i > 1 ? 3 : 2);
    }
    if (n > SHOWN_NAMES) lua_pushfstring(L, " and %d more)", n - SHOWN_NAMES);
    else lua_pushliteral(L, ")");
    lua_concat(L, 2);
    return 2;
}
