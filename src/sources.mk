# The C sources of cachectl.core: the one list, read by the Makefile (the
# module), fuzz/Makefile (everything that reads untrusted text, without the
# Lua entry point and the run loop) and `make lint` (the rockspec lists the
# same files).
CC_LEAVES = parse.c ratelimit.c buf.c clock.c digest.c scrub.c
CC_TEXT = answer.c errors.c options.c request.c endpoints.c urls.c yaml.c policies.c
CC_RUN = core.c session.c handles.c engine.c transfer.c events.c limiter.c redis.c prepared.c cache.c outcome.c
CC_HEADERS = cachectl.h compat.h buf.h clock.h engine.h digest.h options.h scrub.h parse.h ratelimit.h
