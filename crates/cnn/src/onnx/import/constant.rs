//! Tensors known when a file is read, and the computations on them that are done at load:
//! shapes, reshapes, arithmetic on constants.

use super::{unsupported, Outcome, Unsupported, Value};
use crate::limits::MAX_PARAMETERS;
use crate::onnx::proto::{data_type, TensorProto};

/// Marks the batch dimension in a shape computed from a value (`Shape` of the input gives
/// `[BATCH, C, H, W]`), which is not known until the network runs.
pub(super) const BATCH: i64 = i64::MIN;

/// A tensor known when the file is read: an initializer, a `Constant`, or one computed from
/// them.
#[derive(Clone, Debug)]
pub(super) struct Constant {
    pub dims: Vec<usize>,
    pub data: Data,
}

#[derive(Clone, Debug)]
pub(super) enum Data {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

impl Constant {
    pub fn len(&self) -> usize {
        match &self.data {
            Data::Float(v) => v.len(),
            Data::Int(v) => v.len(),
        }
    }

    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::Float(v) => v.clone(),
            Data::Int(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub fn ints(&self) -> std::result::Result<Vec<i64>, String> {
        match &self.data {
            Data::Int(v) => Ok(v.clone()),
            Data::Float(v) => v
                .iter()
                .map(|&x| {
                    (x.fract() == 0.0 && x.abs() < 1e15)
                        .then_some(x as i64)
                        .ok_or_else(|| format!("{x} is not an integer"))
                })
                .collect(),
        }
    }

    pub fn int_vector(dims: Vec<usize>, values: Vec<i64>) -> Constant {
        Constant {
            dims,
            data: Data::Int(values),
        }
    }
}

/// A tensor of the file, checked: its dims, its type, and that its data has as many values as
/// its dims say (before anything is allocated for them).
pub(super) fn read_tensor(tensor: &TensorProto) -> std::result::Result<Constant, String> {
    if tensor.data_location == 1 || !tensor.external_data.is_empty() {
        return Err("its data is in another file (external data is not supported)".into());
    }
    let dims = to_dims(&tensor.dims).map_err(|Unsupported(e)| e)?;
    let len = checked_len(&dims).map_err(|Unsupported(e)| e)?;
    let size = match tensor.data_type {
        data_type::FLOAT | data_type::INT32 => 4,
        data_type::INT64 | data_type::DOUBLE => 8,
        other => {
            return Err(format!(
                "element type {other} is not supported (float32, float64, int32 and int64 are)"
            ))
        }
    };
    let raw = &tensor.raw_data;
    let typed = match tensor.data_type {
        data_type::FLOAT => tensor.float_data.len(),
        data_type::INT32 => tensor.int32_data.len(),
        data_type::INT64 => tensor.int64_data.len(),
        _ => tensor.double_data.len(),
    };
    let stored = if raw.is_empty() {
        typed
    } else {
        raw.len() / size
    };
    if stored != len || (!raw.is_empty() && !raw.len().is_multiple_of(size)) {
        return Err(format!(
            "its dims {dims:?} call for {len} values, its data holds {}",
            if raw.is_empty() {
                typed
            } else {
                raw.len() / size
            }
        ));
    }
    let data = if raw.is_empty() {
        match tensor.data_type {
            data_type::FLOAT => Data::Float(tensor.float_data.clone()),
            data_type::DOUBLE => {
                Data::Float(tensor.double_data.iter().map(|&v| v as f32).collect())
            }
            data_type::INT32 => Data::Int(tensor.int32_data.iter().map(|&v| v as i64).collect()),
            _ => Data::Int(tensor.int64_data.clone()),
        }
    } else {
        match tensor.data_type {
            data_type::FLOAT => Data::Float(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ),
            data_type::DOUBLE => Data::Float(
                raw.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
            data_type::INT32 => Data::Int(
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                    .collect(),
            ),
            _ => Data::Int(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
        }
    };
    if let Data::Float(values) = &data {
        if values.iter().any(|v| !v.is_finite()) {
            return Err("it holds NaN or infinite values".into());
        }
    }
    Ok(Constant { dims, data })
}

pub(super) fn to_dims(dims: &[i64]) -> std::result::Result<Vec<usize>, Unsupported> {
    if dims.len() > 8 {
        return unsupported(format!(": a tensor of rank {} is not", dims.len()));
    }
    dims.iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| Unsupported(format!(": dimension {d} is negative")))
        })
        .collect()
}

pub(super) fn checked_len(dims: &[usize]) -> std::result::Result<usize, Unsupported> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_PARAMETERS)
        .ok_or_else(|| Unsupported(format!(": a tensor of dims {dims:?} is too large")))
}

/// Values of one constant that an op creates at load from a few (`ConstantOfShape`, a
/// broadcast): far more than any classifier's shapes need, far less than memory holds.
const MAX_CREATED: usize = 1 << 24;

/// [`checked_len`] of a constant created at load, at most [`MAX_CREATED`].
pub(super) fn created_len(dims: &[usize]) -> std::result::Result<usize, Unsupported> {
    let len = checked_len(dims)?;
    if len > MAX_CREATED {
        return unsupported(format!(
            ": a constant of dims {dims:?} computed at load (at most {MAX_CREATED} values) is not"
        ));
    }
    Ok(len)
}

pub(super) fn positive(value: i64, what: &str) -> std::result::Result<usize, Unsupported> {
    usize::try_from(value)
        .ok()
        .filter(|v| (1..=crate::limits::MAX_WINDOW).contains(v))
        .ok_or_else(|| Unsupported(format!(": {what} = {value} is out of range")))
}

/// A constant of one value per channel, as a bias is stored (`[C]`, `[1, C]`, `[C, 1, 1]`,
/// `[1, C, 1, 1]`), or one value for all.
pub(super) fn broadcast_vector(
    c: &Constant,
    channels: usize,
) -> std::result::Result<Vec<f32>, Unsupported> {
    let values = c.floats();
    let non_unit: Vec<usize> = c.dims.iter().copied().filter(|&d| d != 1).collect();
    if values.len() == 1 {
        return Ok(vec![values[0]; channels]);
    }
    if non_unit == [channels] {
        return Ok(values);
    }
    unsupported(format!(
        ": a constant of dims {:?} for {channels} channels",
        c.dims
    ))
}

pub(super) fn fold_arithmetic(op: &str, inputs: &[Option<Value>]) -> Outcome {
    let constants: Vec<&Constant> = inputs
        .iter()
        .flatten()
        .map(|v| match v {
            Value::Constant(c) => c,
            _ => unreachable!("all constant"),
        })
        .collect();
    let Some(first) = constants.first() else {
        return unsupported(": it has no inputs");
    };
    // Shapes are computed with integers; anything else in floats.
    let all_int = constants.iter().all(|c| matches!(c.data, Data::Int(_)));
    let mut result = (*first).clone();
    for other in &constants[1..] {
        let (dims, pairs) = broadcast_pairs(&result, other)?;
        result = if all_int {
            let (a, b) = (
                result.ints().map_err(Unsupported)?,
                other.ints().map_err(Unsupported)?,
            );
            let values = pairs
                .iter()
                .map(|&(i, j)| {
                    let (x, y) = (a[i], b[j]);
                    if x == BATCH || y == BATCH {
                        return unsupported(": arithmetic on the batch size is not");
                    }
                    match op {
                        "Add" | "Sum" => x.checked_add(y),
                        "Sub" => x.checked_sub(y),
                        "Mul" => x.checked_mul(y),
                        _ => x.checked_div(y),
                    }
                    .ok_or_else(|| Unsupported(": integer overflow".into()))
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Constant::int_vector(dims, values)
        } else {
            let (a, b) = (result.floats(), other.floats());
            let values = pairs
                .iter()
                .map(|&(i, j)| match op {
                    "Add" | "Sum" => a[i] + b[j],
                    "Sub" => a[i] - b[j],
                    "Mul" => a[i] * b[j],
                    _ => a[i] / b[j],
                })
                .collect();
            Constant {
                dims,
                data: Data::Float(values),
            }
        };
    }
    Ok(Value::Constant(result))
}

/// The dims of a broadcast result, and for each of its values the index of each operand's.
type Broadcast = (Vec<usize>, Vec<(usize, usize)>);

/// NumPy broadcasting of two constants: the result's dims and, for each of its values, the
/// index of the value of each operand.
pub(super) fn broadcast_pairs(
    a: &Constant,
    b: &Constant,
) -> std::result::Result<Broadcast, Unsupported> {
    let rank = a.dims.len().max(b.dims.len());
    let pad = |d: &[usize]| [vec![1; rank - d.len()], d.to_vec()].concat();
    let (da, db) = (pad(&a.dims), pad(&b.dims));
    let mut dims = Vec::with_capacity(rank);
    for (&x, &y) in da.iter().zip(&db) {
        dims.push(match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => {
                return unsupported(format!(
                    ": dims {:?} and {:?} do not broadcast",
                    a.dims, b.dims
                ))
            }
        });
    }
    let len = created_len(&dims)?;
    let strides = |d: &[usize]| {
        let mut s = vec![0; rank];
        let mut acc = 1;
        for k in (0..rank).rev() {
            s[k] = if d[k] == 1 { 0 } else { acc };
            acc *= d[k];
        }
        s
    };
    let (sa, sb) = (strides(&da), strides(&db));
    let mut pairs = Vec::with_capacity(len);
    let mut index = vec![0usize; rank];
    for _ in 0..len {
        let i = index.iter().zip(&sa).map(|(x, s)| x * s).sum();
        let j = index.iter().zip(&sb).map(|(x, s)| x * s).sum();
        pairs.push((i, j));
        for k in (0..rank).rev() {
            index[k] += 1;
            if index[k] < dims[k] {
                break;
            }
            index[k] = 0;
        }
    }
    Ok((dims, pairs))
}

pub(super) fn concat_constants(parts: &[&Constant], axis: i64) -> Outcome {
    // Shapes are concatenated as vectors; that is all a classifier's graph does with it.
    if parts.iter().any(|p| p.dims.len() != 1) || (axis != 0 && axis != -1) {
        return unsupported(": only concatenating vectors of constants is");
    }
    let all_int = parts.iter().all(|c| matches!(c.data, Data::Int(_)));
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let data = if all_int {
        Data::Int(
            parts
                .iter()
                .map(|p| p.ints())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(Unsupported)?
                .concat(),
        )
    } else {
        Data::Float(parts.iter().flat_map(|p| p.floats()).collect())
    };
    Ok(Value::Constant(Constant {
        dims: vec![len],
        data,
    }))
}

pub(super) fn reshape_constant(c: &Constant, dims: Vec<usize>) -> Outcome {
    if checked_len(&dims)? != c.len() {
        return unsupported(format!(": {:?} cannot be reshaped to {dims:?}", c.dims));
    }
    Ok(Value::Constant(Constant {
        dims,
        data: c.data.clone(),
    }))
}

pub(super) fn flatten_dims(
    dims: &[usize],
    axis: i64,
) -> std::result::Result<Vec<usize>, Unsupported> {
    let rank = dims.len() as i64;
    let mut axis = axis;
    if axis < 0 {
        axis += rank;
    }
    if !(0..=rank).contains(&axis) {
        return unsupported(format!(": axis {axis} for rank {rank}"));
    }
    let (outer, inner) = dims.split_at(axis as usize);
    Ok(vec![outer.iter().product(), inner.iter().product()])
}

pub(super) fn resolve_reshape(
    dims: &[usize],
    target: &[i64],
) -> std::result::Result<Vec<usize>, Unsupported> {
    let len: usize = dims.iter().product();
    let mut out: Vec<usize> = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 => out.push(
                *dims
                    .get(i)
                    .ok_or_else(|| Unsupported(": bad reshape".into()))?,
            ),
            t if t > 0 => out.push(t as usize),
            _ => return unsupported(format!(": reshape to {target:?}")),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !len.is_multiple_of(known) {
            return unsupported(format!(": reshape to {target:?}"));
        }
        out[i] = len / known;
    }
    Ok(out)
}

pub(super) fn squeeze_dims(
    op: &str,
    dims: &[usize],
    axes: Option<&[i64]>,
) -> std::result::Result<Vec<usize>, Unsupported> {
    if op == "Squeeze" {
        let rank = dims.len() as i64;
        let axes: Vec<usize> = match axes {
            Some(a) => {
                let mut axes = Vec::with_capacity(a.len());
                for &x in a {
                    let axis = if x < 0 { x + rank } else { x };
                    // ONNX: an axis outside the rank, or of a dimension other than 1, is an
                    // error, not one to skip.
                    if !(0..rank).contains(&axis) || dims[axis as usize] != 1 {
                        return Err(Unsupported(format!(
                            ": Squeeze of axis {x}, on dimensions {dims:?}"
                        )));
                    }
                    axes.push(axis as usize);
                }
                axes
            }
            None => (0..dims.len()).filter(|&k| dims[k] == 1).collect(),
        };
        Ok(dims
            .iter()
            .enumerate()
            .filter(|(k, _)| !axes.contains(k))
            .map(|(_, &d)| d)
            .collect())
    } else {
        let axes = axes.ok_or_else(|| Unsupported(": Unsqueeze without axes".into()))?;
        let rank = (dims.len() + axes.len()) as i64;
        let mut axes: Vec<usize> = axes
            .iter()
            .map(|&x| (if x < 0 { x + rank } else { x }) as usize)
            .collect();
        axes.sort_unstable();
        let mut out = dims.to_vec();
        for a in axes {
            if a > out.len() {
                return unsupported(": axis out of range");
            }
            out.insert(a, 1);
        }
        Ok(out)
    }
}

pub(super) fn transpose_constant(c: &Constant, perm: Option<Vec<i64>>) -> Outcome {
    let rank = c.dims.len();
    let perm: Vec<usize> = match perm {
        Some(p) => p.iter().map(|&x| x as usize).collect(),
        None => (0..rank).rev().collect(),
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..rank).collect::<Vec<_>>() {
        return unsupported(": perm is not a permutation");
    }
    let dims: Vec<usize> = perm.iter().map(|&p| c.dims[p]).collect();
    let strides = strides(&c.dims);
    Ok(Value::Constant(picked(c, dims, |index| {
        index.iter().zip(&perm).map(|(&i, &p)| i * strides[p]).sum()
    })))
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * dims[k + 1];
    }
    strides
}

/// The constant of `dims` whose value at each index (in row-major order) is `c`'s value at
/// `source(index)`.
fn picked(c: &Constant, dims: Vec<usize>, source: impl Fn(&[usize]) -> usize) -> Constant {
    let len: usize = dims.iter().product();
    let mut index = vec![0usize; dims.len()];
    let mut sources = Vec::with_capacity(len);
    for _ in 0..len {
        sources.push(source(&index));
        for k in (0..dims.len()).rev() {
            index[k] += 1;
            if index[k] < dims[k] {
                break;
            }
            index[k] = 0;
        }
    }
    let data = match &c.data {
        Data::Float(v) => Data::Float(sources.iter().map(|&s| v[s]).collect()),
        Data::Int(v) => Data::Int(sources.iter().map(|&s| v[s]).collect()),
    };
    Constant { dims, data }
}

pub(super) fn gather_constant(
    data: &Constant,
    index_dims: &[usize],
    indices: &[i64],
    axis: i64,
) -> Outcome {
    if data.dims.len() != 1 || (axis != 0 && axis != -1) {
        return unsupported(": only gathering from a vector of constants (a shape) is");
    }
    let n = data.len() as i64;
    let picks = indices
        .iter()
        .map(|&i| {
            let i = if i < 0 { i + n } else { i };
            (0..n)
                .contains(&i)
                .then_some(i as usize)
                .ok_or_else(|| Unsupported(format!(": index {i} out of range")))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let dims = index_dims.to_vec();
    let data = match &data.data {
        Data::Float(v) => Data::Float(picks.iter().map(|&i| v[i]).collect()),
        Data::Int(v) => Data::Int(picks.iter().map(|&i| v[i]).collect()),
    };
    Ok(Value::Constant(Constant { dims, data }))
}

/// ONNX's `Slice` of a constant: along each of `axes` (all, in order, by default) the indices
/// from `starts` towards `ends` by `steps` (1 by default; negative steps go backwards),
/// clamped to the axis as ONNX clamps them.
pub(super) fn slice_constant(
    c: &Constant,
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Outcome {
    let rank = c.dims.len();
    let all: Vec<i64> = (0..rank as i64).collect();
    let axes = axes.unwrap_or(&all);
    let ones = vec![1; axes.len()];
    let steps = steps.unwrap_or(&ones);
    if starts.len() != axes.len() || ends.len() != axes.len() || steps.len() != axes.len() {
        return unsupported(": starts, ends, axes and steps of different lengths");
    }
    // The indices kept along every axis.
    let mut kept: Vec<Vec<usize>> = c.dims.iter().map(|&d| (0..d).collect()).collect();
    for (k, &axis) in axes.iter().enumerate() {
        let axis = if axis < 0 { axis + rank as i64 } else { axis };
        let Some(axis) = usize::try_from(axis).ok().filter(|&a| a < rank) else {
            return unsupported(format!(": axis {axis} out of range"));
        };
        let size = c.dims[axis] as i128;
        let (step, start, end) = (
            i128::from(steps[k]),
            i128::from(starts[k]),
            i128::from(ends[k]),
        );
        if step == 0 {
            return unsupported(": a step of 0");
        }
        let resolve = |i: i128| if i < 0 { i + size } else { i };
        let (start, end) = (resolve(start), resolve(end));
        let mut picks = Vec::new();
        if step > 0 {
            let (mut i, end) = (start.clamp(0, size), end.clamp(0, size));
            while i < end {
                picks.push(i as usize);
                i += step;
            }
        } else {
            let (mut i, end) = (start.clamp(0, size - 1), end.clamp(-1, size - 1));
            while i > end {
                picks.push(i as usize);
                i += step;
            }
        }
        kept[axis] = picks;
    }
    let dims: Vec<usize> = kept.iter().map(Vec::len).collect();
    let strides = strides(&c.dims);
    Ok(Value::Constant(picked(c, dims, |index| {
        (0..rank).map(|k| kept[k][index[k]] * strides[k]).sum()
    })))
}
