//! A node's attributes, read with their defaults and checked.

use super::constant::{positive, read_tensor, Constant, Data};
use super::{unsupported, Unsupported};
use crate::onnx::proto::{attribute_type, AttributeProto, NodeProto};
use crate::tensor::Shape;

pub(super) struct Attributes<'a> {
    node: &'a NodeProto,
    /// The op's spatial axes are one (a 1-D op on `[N, C, L]`, held as `C x 1 x L`), not two:
    /// its sizes, strides and pads are for the width, the height's are 1, 1 and 0.
    one_dimensional: bool,
}

impl<'a> Attributes<'a> {
    pub fn new(node: &'a NodeProto) -> Self {
        Attributes {
            node,
            one_dimensional: false,
        }
    }

    /// The same attributes, read for a 1-D op when `yes`.
    pub fn one_dimensional(self, yes: bool) -> Self {
        Attributes {
            one_dimensional: yes,
            ..self
        }
    }

    /// The spatial axes, 1 or 2.
    fn axes(&self) -> usize {
        if self.one_dimensional {
            1
        } else {
            2
        }
    }

    pub fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    pub fn typed(
        &self,
        name: &str,
        kind: i32,
    ) -> std::result::Result<Option<&'a AttributeProto>, Unsupported> {
        match self.get(name) {
            Some(a) if a.r#type == kind || a.r#type == 0 => Ok(Some(a)),
            Some(a) => unsupported(format!(
                ": attribute {name} has the wrong type ({})",
                a.r#type
            )),
            None => Ok(None),
        }
    }

    pub fn int(&self, name: &str, default: i64) -> std::result::Result<i64, Unsupported> {
        Ok(self
            .typed(name, attribute_type::INT)?
            .map_or(default, |a| a.i))
    }

    pub fn float_opt(&self, name: &str) -> std::result::Result<Option<f32>, Unsupported> {
        Ok(self.typed(name, attribute_type::FLOAT)?.map(|a| a.f))
    }

    pub fn float(&self, name: &str, default: f32) -> std::result::Result<f32, Unsupported> {
        let value = self.float_opt(name)?.unwrap_or(default);
        if !value.is_finite() {
            return unsupported(format!(": attribute {name} is not finite"));
        }
        Ok(value)
    }

    pub fn string(&self, name: &str, default: &str) -> std::result::Result<String, Unsupported> {
        Ok(self
            .typed(name, attribute_type::STRING)?
            .map_or(default.to_string(), |a| {
                String::from_utf8_lossy(&a.s).into_owned()
            }))
    }

    pub fn ints_opt(&self, name: &str) -> std::result::Result<Option<Vec<i64>>, Unsupported> {
        Ok(self
            .typed(name, attribute_type::INTS)?
            .map(|a| a.ints.clone()))
    }

    pub fn tensor_opt(&self, name: &str) -> std::result::Result<Option<Constant>, Unsupported> {
        match self
            .typed(name, attribute_type::TENSOR)?
            .and_then(|a| a.t.as_ref())
        {
            Some(t) => read_tensor(t)
                .map(Some)
                .map_err(|e| Unsupported(format!(": {e}"))),
            None => Ok(None),
        }
    }

    /// Two values of a 2-D op, one per spatial axis (of a 1-D op, the height's is 1).
    pub fn pair(&self, name: &str, default: usize) -> std::result::Result<[usize; 2], Unsupported> {
        match self.ints_opt(name)? {
            None if self.one_dimensional => Ok([1, default]),
            None => Ok([default, default]),
            Some(v) if v.len() == self.axes() => {
                let v = v
                    .iter()
                    .map(|&x| positive(x, name))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(if self.one_dimensional {
                    [1, v[0]]
                } else {
                    [v[0], v[1]]
                })
            }
            Some(v) => unsupported(format!(
                ": {name} {v:?} (only 1-D ops on [N, C, L] and 2-D ops on [N, C, H, W] are)"
            )),
        }
    }

    pub fn pair_required(&self, name: &str) -> std::result::Result<[usize; 2], Unsupported> {
        if self.get(name).is_none() {
            return unsupported(format!(": it has no {name}"));
        }
        self.pair(name, 1)
    }

    /// The padding before and after each spatial axis, from `pads` or `auto_pad`.
    pub fn padding(
        &self,
        input: Shape,
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> std::result::Result<([usize; 2], [usize; 2]), Unsupported> {
        let auto = self.string("auto_pad", "NOTSET")?;
        let (begin, end) = match auto.as_str() {
            "NOTSET" => match self.ints_opt("pads")? {
                None => ([0, 0], [0, 0]),
                Some(p) if p.len() == 2 * self.axes() => {
                    let p = p
                        .iter()
                        .map(|&x| {
                            usize::try_from(x)
                                .ok()
                                .filter(|&x| x <= crate::limits::MAX_WINDOW)
                        })
                        .collect::<Option<Vec<usize>>>()
                        .ok_or_else(|| Unsupported(format!(": pads {p:?} are out of range")))?;
                    if self.one_dimensional {
                        ([0, p[0]], [0, p[1]])
                    } else {
                        ([p[0], p[1]], [p[2], p[3]])
                    }
                }
                Some(p) => return unsupported(format!(": pads {p:?} (only 2-D ops are)")),
            },
            "VALID" => ([0, 0], [0, 0]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut begin = [0; 2];
                let mut end = [0; 2];
                for axis in 0..2 {
                    let size = [input.height, input.width][axis];
                    let out = size.div_ceil(stride[axis]);
                    let span = dilation[axis] * (kernel[axis] - 1) + 1;
                    let total = ((out - 1) * stride[axis] + span).saturating_sub(size);
                    let small = total / 2;
                    (begin[axis], end[axis]) = if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                }
                (begin, end)
            }
            other => return unsupported(format!(": auto_pad {other}")),
        };
        Ok((begin, end))
    }

    pub fn constant(&self) -> std::result::Result<Constant, Unsupported> {
        if let Some(t) = self.tensor_opt("value")? {
            return Ok(t);
        }
        if let Some(v) = self.float_opt("value_float")? {
            return Ok(Constant {
                dims: vec![],
                data: Data::Float(vec![v]),
            });
        }
        if let Some(a) = self.typed("value_int", attribute_type::INT)? {
            return Ok(Constant::int_vector(vec![], vec![a.i]));
        }
        if let Some(a) = self.typed("value_ints", attribute_type::INTS)? {
            return Ok(Constant::int_vector(vec![a.ints.len()], a.ints.clone()));
        }
        if let Some(a) = self.typed("value_floats", attribute_type::FLOATS)? {
            return Ok(Constant {
                dims: vec![a.floats.len()],
                data: Data::Float(a.floats.clone()),
            });
        }
        unsupported(": a constant of this kind is not")
    }
}
