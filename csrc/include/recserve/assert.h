// Error handling for the recserve C++ core.
//
// Two kinds of failure, never mixed:
//  - RECSERVE_THROW_IF_NOT / RECSERVE_THROW_OUT_OF_RANGE_IF_NOT: bad *input* from a
//    caller. They throw std::invalid_argument / std::out_of_range, which pybind11
//    turns into ValueError / IndexError. The message is for a person: say what was
//    wrong and how to fix it. MSG may be a stream expression: `"got " << n`.
//  - RECSERVE_ASSERT: an internal invariant. If it fails, recserve has a bug; it prints
//    where and aborts, because continuing could read or write out of bounds.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

#define RECSERVE_ASSERT(X)                                                             \
    do {                                                                               \
        if (!(X)) {                                                                    \
            std::fprintf(stderr, "recserve internal assertion '%s' failed in %s at %s:%d\n", \
                         #X, __func__, __FILE__, __LINE__);                            \
            std::abort();                                                              \
        }                                                                              \
    } while (false)

#define RECSERVE_ASSERT_MSG(X, MSG)                                                    \
    do {                                                                               \
        if (!(X)) {                                                                    \
            std::fprintf(stderr,                                                       \
                         "recserve internal assertion '%s' failed in %s at %s:%d: %s\n", \
                         #X, __func__, __FILE__, __LINE__, MSG);                       \
            std::abort();                                                              \
        }                                                                              \
    } while (false)

#define RECSERVE_THROW_AS(EXCEPTION, MSG)                                              \
    do {                                                                               \
        std::ostringstream recserve_msg_;                                              \
        recserve_msg_ << MSG;                                                          \
        throw EXCEPTION(recserve_msg_.str());                                          \
    } while (false)

#define RECSERVE_THROW_MSG(MSG) RECSERVE_THROW_AS(std::invalid_argument, MSG)

#define RECSERVE_THROW_IF_NOT(X, MSG)                                                  \
    do {                                                                               \
        if (!(X)) {                                                                    \
            RECSERVE_THROW_AS(std::invalid_argument, MSG);                             \
        }                                                                              \
    } while (false)

#define RECSERVE_THROW_OUT_OF_RANGE_IF_NOT(X, MSG)                                     \
    do {                                                                               \
        if (!(X)) {                                                                    \
            RECSERVE_THROW_AS(std::out_of_range, MSG);                                 \
        }                                                                              \
    } while (false)
