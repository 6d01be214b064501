//! Networks that give several outputs (an ONNX file's auxiliary heads, a feature map beside
//! the logits): inference keeps each one intact, in the order the graph lists them, and the
//! loss, on the last node's output, gives no gradient to nodes it does not depend on.

mod common;

use cnn::graph::{Architecture, NodeSpec};
use cnn::{Gradients, Mode, Network, Shape, Workspace};
use common::{rng, tensor, uniform};
use rand::SeedableRng;

/// `main`'s nodes with `aux`'s inserted after node `after`, `aux`'s first node reading
/// `after` and its nodes renamed `aux.<k>`; and the name of the branch's last node.
fn with_branch(main: &str, aux: &str, after: &str) -> (Vec<NodeSpec>, String) {
    let mut nodes = cnn::arch::parse(main, 3).unwrap().nodes;
    let branch: Vec<NodeSpec> = cnn::arch::parse(aux, 3)
        .unwrap()
        .nodes
        .into_iter()
        .enumerate()
        .map(|(k, node)| NodeSpec {
            name: format!("aux.{k}"),
            inputs: vec![if k == 0 {
                after.to_string()
            } else {
                format!("aux.{}", k - 1)
            }],
            ..node
        })
        .collect();
    let last = branch.last().unwrap().name.clone();
    let at = nodes.iter().position(|n| n.name == after).unwrap() + 1;
    nodes.splice(at..at, branch);
    (nodes, last)
}

fn network(nodes: Vec<NodeSpec>, outputs: &[&str], shape: Shape) -> Network {
    let architecture = match outputs {
        [_] => Architecture::graph(nodes),
        _ => Architecture {
            nodes,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        },
    };
    let mut network = Network::new(&architecture, shape).unwrap();
    network.init_kaiming(&mut rand_chacha::ChaCha8Rng::seed_from_u64(5));
    assert_eq!(network.output_names(), outputs);
    assert_eq!(network.architecture(), architecture);
    network
}

/// Every output of `infer`, against the same node's output in the traced forward pass, at
/// batch sizes that run on one thread's plan and that share sub-batches out.
fn check_outputs(network: &Network, outputs: &[&str]) {
    let shape = network.input_shape();
    for batch in [1, 3, 70] {
        let input = tensor(
            batch,
            shape,
            uniform(&mut rng(batch as u64), batch * shape.len(), -1.0, 1.0),
        );
        let mut traced = Workspace::new();
        network.forward(&input, &mut traced, Mode::Infer).unwrap();
        let mut workspace = Workspace::new();
        for _ in 0..2 {
            let given = network.infer_outputs(&input, &mut workspace).unwrap();
            assert_eq!(given.len(), outputs.len());
            for (name, tensor) in outputs.iter().zip(given) {
                let node = network.find_node(name).unwrap();
                let expected = &traced.activations()[node];
                assert_eq!(tensor.batch(), batch, "{name}");
                assert_eq!(tensor.shape(), expected.shape(), "{name}");
                for (a, b) in tensor.data().iter().zip(expected.data()) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{name} at batch {batch}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn inference_gives_every_output_intact() {
    let shape = Shape::new(2, 8, 8);
    // An auxiliary head on the stem, and the stem's maps themselves, which the fused
    // convolution + ReLU + pooling would otherwise never write out.
    let (nodes, aux) = with_branch(
        "stem: conv 4@3 pad=1, act: relu, pool: maxpool 2, flatten, fc: dense classes",
        "gap, dense 5",
        "act",
    );
    let outputs = [aux.as_str(), "fc", "act"];
    check_outputs(&network(nodes, &outputs, shape), &outputs);
    // A residual block's input as an output: the addition fused into the convolution must not
    // take over its buffer.
    let nodes = cnn::arch::parse(
        "stem: conv 4@3 pad=1, s: relu, block: add(conv 4@3 pad=1 | ), gap, fc: dense classes",
        3,
    )
    .unwrap()
    .nodes;
    let outputs = ["s", "fc"];
    check_outputs(&network(nodes, &outputs, shape), &outputs);
}

#[test]
fn the_loss_gives_no_gradient_to_outputs_it_does_not_depend_on() {
    let shape = Shape::new(2, 6, 6);
    let main = "stem: conv 3@3 pad=1, act: relu, avgpool 2, flatten, fc: dense classes";
    let alone = network(cnn::arch::parse(main, 3).unwrap().nodes, &["fc"], shape);
    let (nodes, aux) = with_branch(main, "conv 2@1, gap, dense 4", "act");
    let mut both = network(nodes, &["fc", &aux], shape);
    // The shared nodes' weights as in the network without the branch.
    let weights: Vec<_> = alone
        .nodes()
        .iter()
        .map(|n| n.layer().params().to_vec())
        .collect();
    for node in both.nodes_mut() {
        if let Some(k) = alone.nodes().iter().position(|n| n.name() == node.name()) {
            for (param, value) in node.layer_mut().params_mut().iter_mut().zip(&weights[k]) {
                param.value.clone_from(&value.value);
            }
        }
    }
    let input = tensor(4, shape, uniform(&mut rng(9), 4 * shape.len(), -1.0, 1.0));
    let loss_gradient = uniform(&mut rng(10), 4 * 3, -1.0, 1.0);
    let gradients = |network: &Network| {
        let mut workspace = Workspace::new();
        network
            .forward(&input, &mut workspace, Mode::Train)
            .unwrap();
        workspace
            .output_and_grad_mut()
            .1
            .data_mut()
            .copy_from_slice(&loss_gradient);
        let mut grads = Gradients::new(network);
        network.backward(&input, &mut workspace, &mut grads);
        network
            .params()
            .map(|(node, param)| format!("{node}.{}", param.name))
            .zip(grads.iter().cloned())
            .collect::<Vec<_>>()
    };
    let expected = gradients(&alone);
    let given = gradients(&both);
    for (name, gradient) in &given {
        match expected.iter().find(|(n, _)| n == name) {
            Some((_, expected)) => assert_eq!(gradient, expected, "{name}"),
            None => assert!(gradient.iter().all(|&g| g == 0.0), "{name}: {gradient:?}"),
        }
    }
    assert!(given.iter().any(|(name, _)| name.starts_with("aux.")));
}
