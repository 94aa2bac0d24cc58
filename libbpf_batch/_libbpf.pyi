# Made by cffi from build_ffi.py; cdata has no static types (as bcrypt's stub says).
from typing import Any

ffi: Any
lib: Any
