//! Detection quality and reproducibility of the O2U engine on real MNIST digits with labels
//! flipped through the paper's symmetric noise matrix.

mod common;

use candle_core::Device;
use labelgate::{
    accuracy::offline::JudgeSettings,
    data::{self, Builtin},
    eval,
    noise::NoiseModel,
    o2u::{self, O2uConfig, Silent},
};

#[test]
fn finds_injected_symmetric_noise_on_10k_mnist() {
    common::single_thread();
    let (mut train, test) = data::load_builtin(Builtin::Mnist, &common::data_dir()).expect("MNIST in the data directory");
    train.truncate(10_000);
    eval::inject_noise(&mut train, NoiseModel::Symmetric(0.2), 0).unwrap();
    let report = eval::evaluate(&train, &test, Some(NoiseModel::Symmetric(0.2)), &O2uConfig::default(), &JudgeSettings::gate_defaults(), false, &Device::Cpu, 1, &mut Silent).unwrap();
    eprintln!(
        "LP {:.4} AP {:.4} F1 {:.4} est {:.4} true {:.4} test acc {:?}",
        report.label_precision, report.average_precision, report.f1_auto, report.noise_rate_estimate, report.true_noise_rate, report.test_accuracy_before
    );
    assert!((report.true_noise_rate - 0.2).abs() < 0.02, "the flips follow the matrix");
    assert!(report.label_precision >= 0.9, "label precision {}", report.label_precision);
    assert!(report.average_precision >= 0.95, "average precision {}", report.average_precision);
    assert!((report.noise_rate_estimate - report.true_noise_rate).abs() < 0.05, "estimated rate {}", report.noise_rate_estimate);
    assert!(report.f1_auto >= 0.85, "F1 of the automatic threshold {}", report.f1_auto);
    assert!(report.test_accuracy_before.unwrap() > 0.85, "the network learned digits despite the noise");
}

#[test]
fn same_seed_same_ranking_other_seed_other_scores() {
    common::single_thread();
    let (mut train, _) = data::load_builtin(Builtin::Mnist, &common::data_dir()).unwrap();
    train.truncate(3_000);
    eval::inject_noise(&mut train, NoiseModel::PairFlip(0.3), 1).unwrap();
    let config = O2uConfig { stage1_epochs: 2, cycles: 1, schedule: o2u::CyclicalSchedule { cycle_len: 3, ..O2uConfig::default().schedule }, seed: 42, ..Default::default() };
    let run = |seed: u64| o2u::score(train.samples(), None, &O2uConfig { seed, ..config.clone() }, &Device::Cpu, &mut Silent).unwrap();
    let (a, b, c) = (run(42), run(42), run(43));
    assert_eq!(a.scores, b.scores, "bit-identical scores for the same seed");
    assert_eq!(o2u::suspects::rank_descending(&a.scores), o2u::suspects::rank_descending(&b.scores));
    assert_eq!(a.loss_variance, b.loss_variance);
    assert_ne!(a.scores, c.scores);
}
