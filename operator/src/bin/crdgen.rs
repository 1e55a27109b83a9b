//! Prints the InferenceService CRD as YAML, or writes it into directories.
//!
//! ```text
//! cargo run -p inference-operator --bin crdgen                      # YAML on stdout
//! cargo run -p inference-operator --bin crdgen -- crds charts/inference-operator/crds
//! cargo run -p inference-operator --bin crdgen -- --rbac rbac      # the RBAC files
//! cargo run -p inference-operator --bin crdgen -- --chart charts/inference-operator
//! ```
//! `--chart DIR` writes the chart's generated files: `DIR/crds/<crd>.yaml` and
//! `DIR/files/rbac.yaml` ([`inference_operator::rbac::chart_rules_yaml`]).
//! With directory arguments it writes `<dir>/inferenceservices.serving.inference-server.dev.yaml`
//! in each, creating the directory. `--rbac DIR` writes the operator's RBAC
//! ([`inference_operator::rbac::files`]) into DIR.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = inference_operator::crd::crd_yaml();
    let mut dirs: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = dirs.iter().position(|a| a == "--rbac") {
        let Some(dir) = dirs.get(i + 1).cloned() else {
            eprintln!("crdgen: --rbac needs a directory");
            return ExitCode::FAILURE;
        };
        dirs.drain(i..=i + 1);
        for (name, text) in inference_operator::rbac::files() {
            let path = Path::new(&dir).join(name);
            if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, text))
            {
                eprintln!("crdgen: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!("crdgen: wrote {}", path.display());
        }
        if dirs.is_empty() {
            return ExitCode::SUCCESS;
        }
    }
    if let Some(i) = dirs.iter().position(|a| a == "--chart") {
        let Some(dir) = dirs.get(i + 1).cloned() else {
            eprintln!("crdgen: --chart needs a directory");
            return ExitCode::FAILURE;
        };
        dirs.drain(i..=i + 1);
        let files = [
            (
                Path::new(&dir)
                    .join("crds")
                    .join(inference_operator::crd::crd_file_name()),
                yaml.clone(),
            ),
            (
                Path::new(&dir).join("files/rbac.yaml"),
                inference_operator::rbac::chart_rules_yaml(),
            ),
        ];
        for (path, text) in files {
            let parent = path.parent().unwrap();
            if let Err(e) =
                std::fs::create_dir_all(parent).and_then(|_| std::fs::write(&path, text))
            {
                eprintln!("crdgen: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!("crdgen: wrote {}", path.display());
        }
        if dirs.is_empty() {
            return ExitCode::SUCCESS;
        }
    }
    if dirs.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!(
            "usage: crdgen [--rbac DIR] [--chart DIR] [DIR...]   (no DIR: print the CRD YAML to stdout)"
        );
        return ExitCode::SUCCESS;
    }
    if dirs.is_empty() {
        print!("{yaml}");
        return ExitCode::SUCCESS;
    }
    for dir in dirs {
        let path = Path::new(&dir).join(inference_operator::crd::crd_file_name());
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, &yaml)) {
            eprintln!("crdgen: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("crdgen: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
