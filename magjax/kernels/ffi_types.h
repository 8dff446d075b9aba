// The XLA FFI buffer types the kernels take and return.
//
// Aliases because a comma inside a template argument would split the handler macro's
// arguments.
#pragma once

#include "xla/ffi/api/ffi.h"

namespace magjax {

namespace ffi = xla::ffi;

using Floats3 = ffi::Buffer<ffi::F32, 3>;
using Floats4 = ffi::Buffer<ffi::F32, 4>;
using Ints1 = ffi::Buffer<ffi::S32, 1>;
using Ints2 = ffi::Buffer<ffi::S32, 2>;
using Out3 = ffi::ResultBuffer<ffi::F32, 3>;
using Out4 = ffi::ResultBuffer<ffi::F32, 4>;

}  // namespace magjax
