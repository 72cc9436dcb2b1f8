"""C expressions of the elementwise ops (semantics: kiln/ops/elementwise.py).

Each function gets the operands as C variable names (each evaluated once already), the
attrs (every declared one set: the op definition's defaults were applied when the node was
made), the operand dtypes and the output dtype, and returns a C expression.
"""

from __future__ import annotations

from ...ops.elementwise import GELU_TANH_CUBIC, SOFTPLUS_LINEAR_ABOVE
from .registry import ctype, expression, is_float, lit, mathfn

# float32 exp, erf and tanh from the prelude (branch-free: loops calling them vectorize, as a
# GEMM's GELU or SiLU epilogue does; <= 7 ulp); libm for the other float types.
PRELUDE_F32 = {"exp": "kiln_expf", "erf": "kiln_erff", "tanh": "kiln_tanhf"}


def fn(name: str, dtype: str) -> str:
    """The C function computing math function `name` in dtype."""
    if dtype == "float32" and name in PRELUDE_F32:
        return PRELUDE_F32[name]
    return mathfn(name, dtype)


def _unary_math(op: str, libm: str) -> None:
    expression(op)(lambda a, at, dt, out: f"{fn(libm, dt[0])}({a[0]})")


for _op, _libm in [("exp", "exp"), ("log", "log"), ("sqrt", "sqrt"), ("tanh", "tanh"),
                   ("erf", "erf"), ("floor", "floor"), ("ceil", "ceil"), ("round", "nearbyint"),
                   ("sin", "sin"), ("cos", "cos")]:
    _unary_math(_op, _libm)


def _one(dt: str) -> str:
    return lit(1, dt)


@expression("relu")
def _relu(a, at, dt, out):
    return f"({a[0]} < 0 ? {lit(0, dt[0])} : {a[0]})"


@expression("leaky_relu")
def _leaky(a, at, dt, out):
    return f"({a[0]} < 0 ? {a[0]} * {lit(at['alpha'], dt[0])} : {a[0]})"


@expression("sigmoid")
def _sigmoid(a, at, dt, out):
    one = _one(dt[0])
    return f"({one} / ({one} + {fn('exp', dt[0])}(-{a[0]})))"


def _clamp01(x: str, dt: str) -> str:
    """fmin(fmax(x, 0), 1) (NaN gives 0) as comparisons, which vectorize (libm calls do not)."""
    zero, one = lit(0, dt), _one(dt)
    low = f"({x} > {zero} ? {x} : {zero})"
    return f"({low} < {one} ? {low} : {one})"


@expression("hard_sigmoid")
def _hard_sigmoid(a, at, dt, out):
    alpha, beta = lit(at["alpha"], dt[0]), lit(at["beta"], dt[0])
    return _clamp01(f"({alpha} * {a[0]} + {beta})", dt[0])


@expression("hard_swish")
def _hard_swish(a, at, dt, out):
    return f"({a[0]} * {_clamp01(f'({a[0]} / {lit(6, dt[0])} + {lit(0.5, dt[0])})', dt[0])})"


@expression("reciprocal")
def _reciprocal(a, at, dt, out):
    return f"({_one(dt[0])} / {a[0]})"


@expression("neg")
def _neg(a, at, dt, out):
    return f"(-{a[0]})"


@expression("abs")
def _abs(a, at, dt, out):
    if is_float(dt[0]):
        return f"{fn('fabs', dt[0])}({a[0]})"
    return f"({a[0]} < 0 ? -{a[0]} : {a[0]})"


@expression("gelu")
def _gelu(a, at, dt, out):
    x, t = a[0], dt[0]
    if at["approximate"] == "tanh":
        cubic = lit(GELU_TANH_CUBIC, t)
        inner = f"({lit(0.7978845608028654, t)} * ({x} + {cubic} * {x} * {x} * {x}))"
        return f"({lit(0.5, t)} * {x} * ({_one(t)} + {fn('tanh', t)}{inner}))"
    scaled = f"{x} * {lit(0.7071067811865476, t)}"
    return f"({lit(0.5, t)} * {x} * ({_one(t)} + {fn('erf', t)}({scaled})))"


def _softplus(x: str, t: str) -> str:
    cut = lit(SOFTPLUS_LINEAR_ABOVE, t)
    return f"({x} > {cut} ? {x} : {fn('log1p', t)}({fn('exp', t)}({x})))"


@expression("softplus")
def _softplus_expr(a, at, dt, out):
    return _softplus(a[0], dt[0])


@expression("softsign")
def _softsign(a, at, dt, out):
    return f"({a[0]} / ({_one(dt[0])} + {fn('fabs', dt[0])}({a[0]})))"


@expression("mish")
def _mish(a, at, dt, out):
    return f"({a[0]} * {fn('tanh', dt[0])}({_softplus(a[0], dt[0])}))"


def _expm1_scaled(x: str, alpha: str, t: str) -> str:
    return f"({alpha} * ({fn('exp', t)}({x}) - {_one(t)}))"


@expression("selu")
def _selu(a, at, dt, out):
    t = dt[0]
    alpha, gamma = lit(at["alpha"], t), lit(at["gamma"], t)
    return f"({gamma} * ({a[0]} > 0 ? {a[0]} : {_expm1_scaled(a[0], alpha, t)}))"


@expression("elu")
def _elu(a, at, dt, out):
    t = dt[0]
    return f"({a[0]} > 0 ? {a[0]} : {_expm1_scaled(a[0], lit(at['alpha'], t), t)})"


@expression("celu")
def _celu(a, at, dt, out):
    t, x = dt[0], a[0]
    alpha = lit(at["alpha"], t)
    neg = f"{fn('fmin', t)}({lit(0, t)}, {alpha} * ({fn('exp', t)}({x} / {alpha}) - {_one(t)}))"
    return f"({fn('fmax', t)}({x}, {lit(0, t)}) + {neg})"


@expression("thresholded_relu")
def _thresholded_relu(a, at, dt, out):
    return f"({a[0]} > {lit(at['alpha'], dt[0])} ? {a[0]} : {lit(0, dt[0])})"


@expression("shrink")
def _shrink(a, at, dt, out):
    x, t = a[0], dt[0]
    if not is_float(t):  # integers: compare and add in double, then truncate, as ONNX casts
        x, t = f"(double){x}", "float64"
    lambd, bias = lit(at["lambd"], t), lit(at["bias"], t)
    shrunk = f"({x} < -{lambd} ? {x} + {bias} : ({x} > {lambd} ? {x} - {bias} : {lit(0, t)}))"
    return f"(({ctype(out)}){shrunk})"


@expression("sign")
def _sign(a, at, dt, out):
    return f"(({ctype(out)})(({a[0]} > 0) - ({a[0]} < 0)))"


@expression("clip")
def _clip(a, at, dt, out):
    x, t = a[0], dt[0]
    if at["min"] is not None:
        x = f"({x} < {lit(at['min'], t)} ? {lit(at['min'], t)} : {x})"
    if at["max"] is not None:
        x = f"({x} > {lit(at['max'], t)} ? {lit(at['max'], t)} : {x})"
    return x


@expression("not")
def _not(a, at, dt, out):
    return f"(!{a[0]})"


@expression("cast")
def _cast(a, at, dt, out):
    if out == "bool":
        return f"({a[0]} != 0)"
    return f"(({ctype(out)}){a[0]})"


def _infix(op: str, c_op: str) -> None:
    expression(op)(lambda a, at, dt, out: f"({a[0]} {c_op} {a[1]})")


for _op, _c in [("add", "+"), ("sub", "-"), ("mul", "*"), ("equal", "=="), ("greater", ">"),
                ("less", "<"), ("greater_equal", ">="), ("less_equal", "<="), ("and", "&&"),
                ("or", "||")]:
    _infix(_op, _c)


@expression("xor")
def _xor(a, at, dt, out):
    return f"(!{a[0]} != !{a[1]})"


@expression("div")
def _div(a, at, dt, out):
    if is_float(dt[0]):
        return f"({a[0]} / {a[1]})"
    # C integer division traps on zero and on MIN / -1: give 0 and MIN instead of a crash.
    return f"({a[1]} == 0 ? 0 : ({a[1]} == -1 ? -{a[0]} : {a[0]} / {a[1]}))"


@expression("mod")
def _mod(a, at, dt, out):
    x, y, t = a[0], a[1], dt[0]
    if is_float(t):
        if at["fmod"]:
            return f"{fn('fmod', t)}({x}, {y})"
        wide = "double" if t == "float64" else "float"  # float16 computes in float
        return f"kiln_fmod_floor_{wide}({x}, {y})"
    if at["fmod"]:
        return f"({y} == 0 ? 0 : ({y} == -1 ? 0 : {x} % {y}))"
    return f"({y} == 0 ? 0 : kiln_imod_floor((int64_t){x}, (int64_t){y}))"


@expression("pow")
def _pow(a, at, dt, out):
    if is_float(dt[0]):
        return f"{fn('pow', dt[0])}({a[0]}, ({ctype(dt[0])}){a[1]})"
    return f"(({ctype(dt[0])})kiln_ipow((int64_t){a[0]}, (int64_t){a[1]}))"


@expression("max")
def _max(a, at, dt, out):
    if is_float(dt[0]):  # NaN propagates, as in NumPy
        return f"({a[0]} != {a[0]} || {a[0]} > {a[1]} ? {a[0]} : {a[1]})"
    return f"({a[0]} > {a[1]} ? {a[0]} : {a[1]})"


@expression("min")
def _min(a, at, dt, out):
    if is_float(dt[0]):
        return f"({a[0]} != {a[0]} || {a[0]} < {a[1]} ? {a[0]} : {a[1]})"
    return f"({a[0]} < {a[1]} ? {a[0]} : {a[1]})"


@expression("prelu")
def _prelu(a, at, dt, out):
    return f"({a[0]} < 0 ? {a[0]} * {a[1]} : {a[0]})"


@expression("where")
def _where(a, at, dt, out):
    return f"({a[0]} ? {a[1]} : {a[2]})"
