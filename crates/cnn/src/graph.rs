//! Architectures as data: a graph of named nodes, each an op ([`LayerSpec`]) reading the
//! network's input or earlier nodes' outputs, in an order where every node comes after the
//! nodes it reads (so the list is its own topological order). The last node's output is the
//! network's output, the one training and prediction use; a graph may give others besides (an
//! ONNX file's other outputs), which inference keeps and `cnn run` writes.
//!
//! A node's name is its module path, as PyTorch's `state_dict` names a module's parameters
//! (`conv1`, `layer1.0.bn2`, `layer2.0.downsample.0`): parameter `weight` of node `conv1` is
//! saved as `conv1.weight`. A plain stack is the graph whose node `i` is named `"i"` and reads
//! node `i - 1` (node 0 the input): `nn.Sequential`'s names, `"0.weight"`, as model files have
//! always had.
//!
//! In a model file a stack is written as the list of its layers (the format of files before
//! graphs, which keeps reading them), any other graph as `{"nodes": [{"name", "op", "inputs"}]}`.

use crate::error::{Error, Result};
use crate::layers::LayerSpec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The name by which nodes read the network's input.
pub const INPUT: &str = "input";

/// One node: its name (module path), its op, and the values it reads (node names, or
/// [`INPUT`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub op: LayerSpec,
    pub inputs: Vec<String>,
}

/// A network's architecture: its nodes in topological order, the last one its output.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    pub nodes: Vec<NodeSpec>,
    /// The nodes whose outputs the network gives, in order, when they are not just the last
    /// node (empty): the last node among them.
    pub outputs: Vec<String>,
}

impl Architecture {
    /// A plain stack: node `i` named `"i"`, reading node `i - 1` (node 0 the input).
    pub fn sequential(layers: &[LayerSpec]) -> Self {
        let nodes = layers
            .iter()
            .enumerate()
            .map(|(i, op)| NodeSpec {
                name: i.to_string(),
                op: *op,
                inputs: vec![if i == 0 {
                    INPUT.to_string()
                } else {
                    (i - 1).to_string()
                }],
            })
            .collect();
        Architecture {
            nodes,
            outputs: Vec::new(),
        }
    }

    /// A graph whose only output is its last node.
    pub fn graph(nodes: Vec<NodeSpec>) -> Self {
        Architecture {
            nodes,
            outputs: Vec::new(),
        }
    }

    /// The names of the nodes whose outputs the network gives, in order.
    pub fn output_names(&self) -> Vec<&str> {
        match (&self.outputs[..], self.nodes.last()) {
            ([], Some(last)) => vec![last.name.as_str()],
            (outputs, _) => outputs.iter().map(String::as_str).collect(),
        }
    }

    /// The layers, when this is a plain stack as [`Architecture::sequential`] makes one.
    pub fn as_sequential(&self) -> Option<Vec<LayerSpec>> {
        let layers: Vec<LayerSpec> = self.nodes.iter().map(|n| n.op).collect();
        (Architecture::sequential(&layers) == *self).then_some(layers)
    }

    /// Checks what makes a graph: at least one node; names unique, not empty and not
    /// [`INPUT`]; every input a node before (or the input); every node but the last read by
    /// another or an output; the outputs nodes, each listed once, the last node among them;
    /// ops given the number of inputs they take; no op that needs feature maps
    /// ([`LayerSpec::needs_maps`]) after they were flattened (this engine would run it on
    /// `F x 1 x 1` maps, but the PyTorch module of the same name cannot run at all). The error
    /// names the node.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Architecture(message));
        if self.nodes.is_empty() {
            return fail("it has no layers".into());
        }
        let mut position: HashMap<&str, usize> = HashMap::new();
        let mut read = vec![false; self.nodes.len()];
        // For each node, the node that flattened the features it gives, if any.
        let mut flattened_by: Vec<Option<usize>> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            if node.name.is_empty() || node.name == INPUT {
                return fail(format!("node {i} has the reserved name `{}`", node.name));
            }
            if position.insert(&node.name, i).is_some() {
                return fail(format!("two nodes are named `{}`", node.name));
            }
            if node.inputs.is_empty() {
                return fail(format!("node `{}` reads nothing", node.name));
            }
            if !node.op.takes_several_inputs() && node.inputs.len() != 1 {
                return fail(format!(
                    "node `{}` ({}) takes one input, not {}",
                    node.name,
                    node.op.kind(),
                    node.inputs.len()
                ));
            }
            if node.op.takes_several_inputs() && node.inputs.len() < 2 {
                return fail(format!(
                    "node `{}` ({}) needs at least two inputs",
                    node.name,
                    node.op.kind()
                ));
            }
            for input in &node.inputs {
                if input == INPUT {
                    continue;
                }
                match position.get(input.as_str()) {
                    Some(&j) if j < i => read[j] = true,
                    Some(_) => return fail(format!("node `{}` reads itself", node.name)),
                    None => {
                        return fail(format!(
                            "node `{}` reads `{input}`, which is not a node before it",
                            node.name
                        ))
                    }
                }
            }
            let flat_inputs: Vec<Option<usize>> = node
                .inputs
                .iter()
                .map(|input| match input.as_str() {
                    INPUT => None,
                    name => flattened_by[position[name]],
                })
                .collect();
            let flat_input = flat_inputs.iter().flatten().next().copied();
            if let (Some(flat), true) = (flat_input, node.op.needs_maps()) {
                return fail(format!(
                    "node `{}` ({}) needs C x H x W feature maps, but node `{}` ({}) has \
                     already flattened them into features; move it before `{}`",
                    node.name,
                    node.op,
                    self.nodes[flat].name,
                    self.nodes[flat].op,
                    self.nodes[flat].name
                ));
            }
            let flags: Vec<bool> = flat_inputs.iter().map(Option::is_some).collect();
            let flat = node.op.output_flat(&flags);
            flattened_by.push(flat.then(|| flat_input.unwrap_or(i)));
        }
        let last = &self.nodes[self.nodes.len() - 1].name;
        let outputs = self.output_names();
        if !outputs.contains(&last.as_str()) {
            return fail(format!(
                "the last node, `{last}`, is not among the outputs ({})",
                outputs.join(", ")
            ));
        }
        for (k, output) in outputs.iter().enumerate() {
            match position.get(output) {
                Some(&i) => read[i] = true,
                None => return fail(format!("output `{output}` is not a node")),
            }
            if outputs[..k].contains(output) {
                return fail(format!("output `{output}` is listed twice"));
            }
        }
        if let Some(i) = read.iter().position(|r| !r) {
            return fail(format!(
                "node `{}` is read by no other node and is not an output",
                self.nodes[i].name
            ));
        }
        Ok(())
    }
}

impl Serialize for Architecture {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match self.as_sequential() {
            Some(layers) => layers.serialize(serializer),
            None => Graph {
                nodes: &self.nodes,
                outputs: &self.outputs,
            }
            .serialize(serializer),
        }
    }
}

#[derive(Serialize)]
struct Graph<'a> {
    nodes: &'a [NodeSpec],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    outputs: &'a [String],
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Stack(Vec<LayerSpec>),
    Graph {
        nodes: Vec<NodeSpec>,
        #[serde(default)]
        outputs: Vec<String>,
    },
}

impl<'de> Deserialize<'de> for Architecture {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Stack(layers) => Architecture::sequential(&layers),
            Stored::Graph { nodes, outputs } => Architecture { nodes, outputs },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, op: LayerSpec, inputs: &[&str]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_stack_is_stored_as_the_list_of_its_layers() {
        let layers = [LayerSpec::Relu, LayerSpec::Flatten];
        let stack = Architecture::sequential(&layers);
        let json = serde_json::to_string(&stack).unwrap();
        assert_eq!(json, serde_json::to_string(&layers).unwrap());
        let back: Architecture = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stack);
    }

    #[test]
    fn a_graph_is_stored_with_its_nodes() {
        let graph = Architecture::graph(vec![
            node("a", LayerSpec::Relu, &[INPUT]),
            node("b", LayerSpec::Add, &["a", INPUT]),
        ]);
        graph.validate().unwrap();
        let json = serde_json::to_string(&graph).unwrap();
        assert!(json.starts_with("{\"nodes\":["), "{json}");
        let back: Architecture = serde_json::from_str(&json).unwrap();
        assert_eq!(back, graph);
    }

    #[test]
    fn a_graph_of_several_outputs_keeps_them() {
        let graph = Architecture {
            nodes: vec![
                node("a", LayerSpec::Relu, &[INPUT]),
                node("aux", LayerSpec::Sigmoid, &["a"]),
                node("b", LayerSpec::Tanh, &["a"]),
            ],
            outputs: vec!["aux".into(), "b".into()],
        };
        graph.validate().unwrap();
        assert_eq!(graph.output_names(), ["aux", "b"]);
        let json = serde_json::to_string(&graph).unwrap();
        assert!(json.ends_with(",\"outputs\":[\"aux\",\"b\"]}"), "{json}");
        let back: Architecture = serde_json::from_str(&json).unwrap();
        assert_eq!(back, graph);
        assert_eq!(
            Architecture::graph(graph.nodes.clone()).output_names(),
            ["b"]
        );
    }

    #[test]
    fn malformed_graphs_are_named() {
        for (nodes, expected) in [
            (vec![], "no layers"),
            (
                vec![node("input", LayerSpec::Relu, &[INPUT])],
                "reserved name",
            ),
            (
                vec![
                    node("a", LayerSpec::Relu, &[INPUT]),
                    node("a", LayerSpec::Relu, &["a"]),
                ],
                "two nodes are named `a`",
            ),
            (vec![node("a", LayerSpec::Relu, &["b"])], "reads `b`"),
            (vec![node("a", LayerSpec::Relu, &["a"])], "reads itself"),
            (
                vec![node("a", LayerSpec::Relu, &[INPUT, INPUT])],
                "takes one input",
            ),
            (
                vec![node("a", LayerSpec::Add, &[INPUT])],
                "at least two inputs",
            ),
            (
                vec![
                    node("a", LayerSpec::Relu, &[INPUT]),
                    node("b", LayerSpec::Relu, &[INPUT]),
                ],
                "node `a` is read by no other node",
            ),
        ] {
            let error = Architecture::graph(nodes).validate().unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        let three = vec![
            node("a", LayerSpec::Relu, &[INPUT]),
            node("b", LayerSpec::Relu, &["a"]),
            node("c", LayerSpec::Relu, &[INPUT]),
        ];
        for (outputs, expected) in [
            (
                vec!["a", "b"],
                "the last node, `c`, is not among the outputs",
            ),
            (vec!["x", "c"], "output `x` is not a node"),
            (vec!["c", "c"], "output `c` is listed twice"),
            (
                vec!["a", "c"],
                "node `b` is read by no other node and is not an output",
            ),
        ] {
            let graph = Architecture {
                nodes: three.clone(),
                outputs: outputs.into_iter().map(String::from).collect(),
            };
            let error = graph.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
