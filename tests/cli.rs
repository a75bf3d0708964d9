//! The `ffkern` binary's contracts: `list --json`, `check --json` and `bench --json` records,
//! `ffkern run` on every op name with the tensors its `--help` documents (results against host
//! computations where they are short to write), and bad files, missing tensors, mismatched
//! shapes and bad indices giving a clear error and a non-zero exit, never a panic.

#![cfg(feature = "cli")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ffkern::{DType, HostTensor, SplitMix64};
use safetensors::Dtype;

/// A scratch directory of this test binary (one per test, removed first).
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ffkern-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// (exit code, stdout, stderr) of `ffkern args…`: the binary this build made, or `FFKERN_BIN`
/// (where the test binary runs on another machine, as in scripts/device-check.sh).
fn ffkern(args: &[&str]) -> (i32, String, String) {
    ffkern_env(args, &[])
}

/// [`ffkern`] with environment variables set.
fn ffkern_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let bin = std::env::var_os("FFKERN_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ffkern")));
    let out = Command::new(bin).args(args).envs(env.iter().copied()).output().expect("running ffkern");
    let (so, se) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!se.contains("panicked"), "ffkern {args:?} panicked:\n{se}");
    (out.status.code().unwrap_or(-1), so, se)
}

/// Runs an op that must succeed; returns its output tensors.
fn run_ok(args: &[&str], output: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let (code, _, err) = ffkern(args);
    assert_eq!(code, 0, "ffkern {args:?} failed:\n{err}");
    read(output)
}

/// Runs an op that must fail with a message containing `needle`.
fn run_err(args: &[&str], needle: &str) {
    let (code, _, err) = ffkern(args);
    assert_ne!(code, 0, "ffkern {args:?} should fail");
    assert!(err.contains(needle), "ffkern {args:?}: the error should mention {needle:?}:\n{err}");
}

/// A tensor to write: f32 with its shape, a 1-D I64 index tensor, or raw bytes of any dtype.
enum T {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<i64>),
    Raw(Dtype, Vec<usize>, Vec<u8>),
}

fn write(path: &Path, tensors: &[(&str, T)]) {
    let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| match t {
            T::F32(s, v) => (n.to_string(), Dtype::F32, s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            T::I64(v) => (n.to_string(), Dtype::I64, vec![v.len()], v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            T::Raw(d, s, b) => (n.to_string(), *d, s.clone(), b.clone()),
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        encoded.iter().map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("tensor view"))).collect();
    std::fs::write(path, safetensors::serialize(views, None).expect("serialize")).expect("write");
}

fn read(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).expect("output file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors output");
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), Dtype::F32, "{n}");
            (n, (v.shape().to_vec(), v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        })
        .collect()
}

/// Seeded values in [-1, 1) (never zeros).
fn rand(shape: &[usize], seed: u64) -> T {
    T::F32(shape.to_vec(), HostTensor::random(DType::F32, vec![shape.iter().product()], seed).data)
}

fn data(t: &T) -> &[f32] {
    match t {
        T::F32(_, v) => v,
        _ => &[],
    }
}

fn assert_near(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()), "{what}[{i}]: {g} against {w}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn list_check_and_bench_json_follow_the_contract() {
    let (code, out, _) = ffkern(&["list", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).expect("list --json is JSON");
    let ops: Vec<&str> = list.as_array().expect("an array").iter().map(|r| r["op"].as_str().expect("op")).collect();
    for op in ["gemm", "ffn", "repavit", "structured", "linear_attn", "graph", "noisy_optimizer"] {
        assert!(ops.contains(&op), "list names {op}: {ops:?}");
    }
    for r in list.as_array().into_iter().flatten() {
        assert!(r["backends"].as_array().is_some_and(|b| b.iter().any(|x| x == "cpu")), "{r}");
        assert!(r["dtypes"].as_array().is_some_and(|d| d.len() == 3), "{r}");
    }
    let (code, out, err) = ffkern(&["check", "--op", "gemm", "--backend", "cpu", "--dtype", "f32", "--json"]);
    assert_eq!(code, 0, "{err}");
    let recs: serde_json::Value = serde_json::from_str(&out).expect("check --json is JSON");
    let recs = recs.as_array().expect("an array");
    assert!(!recs.is_empty());
    for r in recs {
        for key in ["op", "backend", "dtype", "shape", "rms_ratio", "max_abs", "budget", "pass"] {
            assert!(r.get(key).is_some(), "record without {key}: {r}");
        }
        assert_eq!(r["pass"], true, "{r}");
        assert_eq!(r["backend"], "cpu");
    }
    run_err(&["check", "--op", "nosuch"], "unknown op");
    let (code, out, err) = ffkern(&["bench", "--op", "noisy_optimizer", "--backend", "cpu", "--reps", "1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let recs: serde_json::Value = serde_json::from_str(&out).expect("bench --json is JSON");
    let recs = recs.as_array().expect("an array");
    assert!(recs.iter().any(|r| r["op"] == "noisy_optimizer"), "{out}");
    for r in recs {
        for key in ["op", "backend", "dtype", "shape", "median_s", "gflops", "gbps", "roofline_fraction", "peak_mem_bytes"] {
            assert!(r.get(key).is_some(), "bench record without {key}: {r}");
        }
        assert!(r["median_s"].as_f64().is_some_and(|t| t > 0.0), "{r}");
    }
}

#[test]
fn run_gemm_matches_a_host_product() {
    let dir = scratch("gemm");
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    let (m, n, k) = (3, 5, 4);
    let (a, b, bias, r) = (rand(&[m, k], 1), rand(&[n, k], 2), rand(&[n], 3), rand(&[m, n], 4));
    // c = relu(2·A·Bᵀ + bias) + 0.5·R, z the pre-activation.
    let mut want_c = Vec::new();
    let mut want_z = Vec::new();
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|l| data(&a)[i * k + l] as f64 * data(&b)[j * k + l] as f64).sum();
            let z = 2.0 * dot + data(&bias)[j] as f64;
            want_z.push(z);
            want_c.push(z.max(0.0) + 0.5 * data(&r)[i * n + j] as f64);
        }
    }
    write(&inp, &[("a", a), ("b", b), ("bias", bias), ("r", r)]);
    for backend in ["cpu", ""] {
        let mut args = vec!["run", "gemm", "--input", s(&inp), "--output", s(&out), "--act", "relu", "--alpha", "2", "--beta", "0.5", "--save-z"];
        if !backend.is_empty() {
            args.extend(["--backend", backend]); // else the best backend present
        }
        let t = run_ok(&args, &out);
        assert_eq!(t["c"].0, vec![m, n]);
        assert_near("c", &t["c"].1, &want_c);
        // z is the pre-activation α·A·Bᵀ + bias (the residual is added after the activation).
        let zc: Vec<f64> = want_z.clone();
        assert_near("z", &t["z"].1, &zc);
    }
    // Bad input: a missing tensor is named, a mismatched shape is a shape error, a bad option
    // value is refused; none writes an output.
    write(&inp, &[("a", rand(&[m, k], 1)), ("b", rand(&[n, k + 1], 2))]);
    run_err(&["run", "gemm", "--input", s(&inp), "--output", s(&dir.join("x.safetensors"))], "shape");
    write(&inp, &[("a", rand(&[m, k], 1))]);
    run_err(&["run", "gemm", "--input", s(&inp), "--output", s(&dir.join("x.safetensors"))], "'b'");
    write(&inp, &[("a", rand(&[m, k], 1)), ("b", rand(&[n, k], 2))]);
    run_err(&["run", "gemm", "--input", s(&inp), "--output", s(&dir.join("x.safetensors")), "--act", "tanhh"], "tanhh");
    run_err(&["run", "gemm", "--input", s(&inp), "--output", s(&dir.join("x.safetensors")), "--act-cols", "99"], "act_cols");
    assert!(!dir.join("x.safetensors").exists());
}

#[test]
fn bad_files_give_errors_not_panics() {
    let dir = scratch("bad");
    let out = dir.join("out.safetensors");
    let o = s(&out);
    run_err(&["run", "gemm", "--input", s(&dir.join("missing.safetensors")), "--output", o], "missing.safetensors");
    // Not a safetensors file: random bytes, an empty file, a header that claims too much.
    let mut rng = SplitMix64::new(9);
    let garbage: Vec<u8> = (0..300).map(|_| rng.next_u64() as u8).collect();
    for (name, bytes) in [("garbage", garbage), ("empty", Vec::new()), ("short", vec![0xff; 8])] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        run_err(&["run", "ffn", "--input", s(&p), "--output", o], "safetensors");
        run_err(&["run", "segment_reduce", "--input", s(&p), "--output", o, "--num-nodes", "3"], "safetensors");
    }
    // A tensor of an unsupported dtype, an index tensor of floats, a 2-D index tensor.
    let inp = dir.join("in.safetensors");
    let i = s(&inp);
    write(&inp, &[("a", T::Raw(Dtype::U8, vec![2, 2], vec![1, 2, 3, 4])), ("b", rand(&[2, 2], 1))]);
    run_err(&["run", "gemm", "--input", i, "--output", o], "not supported");
    write(&inp, &[("src", rand(&[2], 1)), ("dst", T::I64(vec![0, 1])), ("m", rand(&[2, 3], 2))]);
    run_err(&["run", "segment_reduce", "--input", i, "--output", o, "--num-nodes", "2"], "'src' must be I64 or I32");
    write(&inp, &[("src", T::Raw(Dtype::I64, vec![1, 2], [0i64, 1].iter().flat_map(|x| x.to_le_bytes()).collect())), ("dst", T::I64(vec![0, 1])), ("m", rand(&[2, 3], 2))]);
    run_err(&["run", "segment_reduce", "--input", i, "--output", o, "--num-nodes", "2"], "1-D");
    // Indices outside [0, N) name the edge; N past 2^32 is a limit; features of the wrong shape.
    write(&inp, &[("src", T::I64(vec![0, 1, 2])), ("dst", T::I64(vec![0, 5, 1])), ("m", rand(&[3, 2], 3))]);
    run_err(&["run", "segment_reduce", "--input", i, "--output", o, "--num-nodes", "3"], "edge 1");
    write(&inp, &[("src", T::I64(vec![0, -1])), ("dst", T::I64(vec![0, 1])), ("m", rand(&[2, 2], 3))]);
    run_err(&["run", "segment_reduce", "--input", i, "--output", o, "--num-nodes", "3"], "src = -1");
    write(&inp, &[("src", T::I64(vec![0, 1])), ("dst", T::I64(vec![0, 1])), ("m", rand(&[2, 2], 3))]);
    run_err(&["run", "segment_reduce", "--input", i, "--output", o, "--num-nodes", "99999999999"], "2^32");
    run_err(&["run", "segment_reduce", "--input", i, "--output", o, "--num-nodes", "2", "--reduce", "median"], "median");
    write(&inp, &[("src", T::I64(vec![0, 1])), ("dst", T::I64(vec![0, 1])), ("m", rand(&[3, 2], 3))]);
    run_err(&["run", "segment_reduce", "--input", i, "--output", o, "--num-nodes", "2"], "shape");
    assert!(!out.exists(), "no failing run writes an output");
}

/// A wrong setting is an error naming it: `check` on the best backend must not fall back to the
/// CPU reference as though no GPU were present (every device runtime checks FFKERN_GRID_LIMIT).
#[test]
fn wrong_settings_are_errors_not_a_fall_back_to_the_cpu() {
    if ffkern::compiled_backends() == ["cpu"] {
        return;
    }
    for (var, value) in [("FFKERN_GRID_LIMIT", "0"), ("FFKERN_GRID_LIMIT", "many")] {
        let (code, out, err) = ffkern_env(&["check", "--op", "noisy_optimizer"], &[(var, value)]);
        assert_ne!(code, 0, "{var}={value}: check ran:\n{out}");
        assert!(err.contains(&format!("{var}={value}")), "{var}={value}: the error should name the setting:\n{err}");
    }
    // Empty is unset.
    let (code, _, err) = ffkern_env(&["check", "--op", "noisy_optimizer"], &[("FFKERN_GRID_LIMIT", "")]);
    assert_eq!(code, 0, "{err}");
}

/// A small graph: 4 nodes, node 3 without in-edges, a self-loop and a multi-edge.
const SRC: [i64; 6] = [1, 2, 0, 1, 2, 2];
const DST: [i64; 6] = [0, 0, 1, 2, 2, 2];

#[test]
fn run_graph_ops_match_host_sums() {
    let dir = scratch("graph");
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    let (i, o) = (s(&inp), s(&out));
    let (n, d) = (4, 3);
    let m = rand(&[SRC.len(), d], 5);
    let mut sum = vec![0.0f64; n * d];
    let mut max = vec![f64::NEG_INFINITY; n * d];
    for (e, &t) in DST.iter().enumerate() {
        for c in 0..d {
            let v = data(&m)[e * d + c] as f64;
            sum[t as usize * d + c] += v;
            max[t as usize * d + c] = max[t as usize * d + c].max(v);
        }
    }
    let max: Vec<f64> = max.iter().map(|&v| if v.is_finite() { v } else { 0.0 }).collect(); // empty rows give 0
    write(&inp, &[("src", T::I64(SRC.to_vec())), ("dst", T::I64(DST.to_vec())), ("m", m)]);
    let t = run_ok(&["run", "segment_reduce", "--input", i, "--output", o, "--num-nodes", "4", "--backend", "cpu"], &out);
    assert_eq!(t["out"].0, vec![n, d]);
    assert_near("segment sum", &t["out"].1, &sum);
    let t = run_ok(&["run", "segment_reduce", "--input", i, "--output", o, "--num-nodes", "4", "--reduce", "max"], &out);
    assert_near("segment max", &t["out"].1, &max);
    assert!(t.contains_key("arg"));

    // spmm with edge weights: y[i] = Σ_{e → i} w[e]·x[src e].
    let (x, w) = (rand(&[n, d], 6), rand(&[SRC.len()], 7));
    let mut y = vec![0.0f64; n * d];
    for e in 0..SRC.len() {
        for c in 0..d {
            y[DST[e] as usize * d + c] += data(&w)[e] as f64 * data(&x)[SRC[e] as usize * d + c] as f64;
        }
    }
    write(&inp, &[("src", T::I64(SRC.to_vec())), ("dst", T::I64(DST.to_vec())), ("x", x), ("w", w)]);
    let t = run_ok(&["run", "spmm", "--input", i, "--output", o, "--num-nodes", "4"], &out);
    assert_near("spmm", &t["y"].1, &y);

    // segment_softmax over 2 heads: each node's in-edges sum to 1 per head.
    write(&inp, &[("src", T::I64(SRC.to_vec())), ("dst", T::I64(DST.to_vec())), ("s", rand(&[SRC.len(), 2], 8))]);
    let t = run_ok(&["run", "segment_softmax", "--input", i, "--output", o, "--num-nodes", "4", "--heads", "2"], &out);
    for node in 0..3 {
        for h in 0..2 {
            let total: f32 = (0..SRC.len()).filter(|&e| DST[e] == node).map(|e| t["alpha"].1[e * 2 + h]).sum();
            assert!((total - 1.0).abs() < 1e-5, "node {node} head {h}: {total}");
        }
    }

    // edge_mlp_sum: m[e] = act(W_e·e_e + W_s·h_src + W_d·h_dst + b), here with identity.
    let (de, dn, dout) = (2, 3, 2);
    let (e, h, we, ws, wd, b) = (rand(&[SRC.len(), de], 9), rand(&[n, dn], 10), rand(&[dout, de], 11), rand(&[dout, dn], 12), rand(&[dout, dn], 13), rand(&[dout], 14));
    let mut want = Vec::new();
    for k in 0..SRC.len() {
        for r in 0..dout {
            let mut acc = data(&b)[r] as f64;
            acc += (0..de).map(|c| data(&we)[r * de + c] as f64 * data(&e)[k * de + c] as f64).sum::<f64>();
            acc += (0..dn).map(|c| data(&ws)[r * dn + c] as f64 * data(&h)[SRC[k] as usize * dn + c] as f64).sum::<f64>();
            acc += (0..dn).map(|c| data(&wd)[r * dn + c] as f64 * data(&h)[DST[k] as usize * dn + c] as f64).sum::<f64>();
            want.push(acc);
        }
    }
    write(&inp, &[("src", T::I64(SRC.to_vec())), ("dst", T::I64(DST.to_vec())), ("e", e), ("h", h), ("w_e", we), ("w_s", ws), ("w_d", wd), ("b", b)]);
    let t = run_ok(&["run", "edge_mlp_sum", "--input", i, "--output", o, "--num-nodes", "4", "--act", "identity"], &out);
    assert_eq!(t["m"].0, vec![SRC.len(), dout]);
    assert_near("edge_mlp_sum", &t["m"].1, &want);
}

#[test]
fn run_accepts_every_op_with_its_documented_tensors() {
    let dir = scratch("ops");
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    let (i, o) = (s(&inp), s(&out));
    let shape = |t: &HashMap<String, (Vec<usize>, Vec<f32>)>, name: &str| t.get(name).map(|x| x.0.clone()).unwrap_or_else(|| panic!("output {name} missing"));

    // Dense FFN with the shortcut.
    write(&inp, &[("x", rand(&[5, 4], 1)), ("w1", rand(&[8, 4], 2)), ("b1", rand(&[8], 3)), ("w2", rand(&[4, 8], 4)), ("b2", rand(&[4], 5))]);
    assert_eq!(shape(&run_ok(&["run", "ffn", "--input", i, "--output", o, "--residual"], &out), "y"), vec![5, 4]);

    // RePaViT: reparameterize (C 4, H 8, θ 0.75 → a 2), then merged inference.
    let (c, hd) = (4, 8);
    let var = |n: usize, seed: u64| T::F32(vec![n], data(&rand(&[n], seed)).iter().map(|v| 1.0 + 0.5 * v.abs()).collect());
    write(
        &inp,
        &[
            ("w1", rand(&[hd, c], 1)),
            ("b1", rand(&[hd], 2)),
            ("w2", rand(&[c, hd], 3)),
            ("b2", rand(&[c], 4)),
            ("bn1_gamma", rand(&[c], 5)),
            ("bn1_beta", rand(&[c], 6)),
            ("bn1_mean", rand(&[c], 7)),
            ("bn1_var", var(c, 8)),
            ("bn2_gamma", rand(&[hd], 9)),
            ("bn2_beta", rand(&[hd], 10)),
            ("bn2_mean", rand(&[hd], 11)),
            ("bn2_var", var(hd, 12)),
        ],
    );
    let merged = run_ok(&["run", "repavit_reparam", "--input", i, "--output", o, "--theta", "0.75"], &out);
    assert_eq!(shape(&merged, "wu"), vec![2 + c, c]);
    assert_eq!(shape(&merged, "wo"), vec![c, 2]);
    let t = |n: &str| T::F32(merged[n].0.clone(), merged[n].1.clone());
    write(&inp, &[("x", rand(&[3, c], 13)), ("wu", t("wu")), ("bu", t("bu")), ("wo", t("wo"))]);
    assert_eq!(shape(&run_ok(&["run", "repavit_ffn", "--input", i, "--output", o], &out), "y"), vec![3, c]);

    // Structured layers, in → out 8 → 12, with and without self-guided mixing.
    write(&inp, &[("x", rand(&[5, 8], 1)), ("v", rand(&[3, 8], 2)), ("u", rand(&[12, 3], 3)), ("wg", rand(&[12, 8], 4))]);
    assert_eq!(shape(&run_ok(&["run", "lowrank", "--input", i, "--output", o], &out), "y"), vec![5, 12]);
    assert_eq!(shape(&run_ok(&["run", "lowrank", "--input", i, "--output", o, "--alpha", "0.3"], &out), "y"), vec![5, 12]);
    write(&inp, &[("x", rand(&[5, 8], 1)), ("d", rand(&[2, 3, 4], 2)), ("l", rand(&[12, 6], 3))]);
    assert_eq!(shape(&run_ok(&["run", "blockdense", "--input", i, "--output", o], &out), "y"), vec![5, 12]);
    write(&inp, &[("x", rand(&[5, 8], 1)), ("d1", rand(&[2, 3, 4], 2)), ("d2", rand(&[2, 6, 3], 3))]);
    assert_eq!(shape(&run_ok(&["run", "blockshuffle", "--input", i, "--output", o], &out), "y"), vec![5, 12]);
    write(&inp, &[("x", rand(&[5, 8], 1)), ("d1", rand(&[3, 3, 4], 2)), ("d2", rand(&[2, 6, 3], 3))]);
    run_err(&["run", "blockshuffle", "--input", i, "--output", s(&dir.join("x.safetensors"))], "shape");

    // Linear attention: the recurrent and chunked modes agree; the decode step continues it.
    let (b, tl, h, k, v) = (1, 70, 2, 4, 3);
    write(&inp, &[("q", rand(&[b, tl, h, k], 1)), ("k", rand(&[b, tl, h, k], 2)), ("v", rand(&[b, tl, h, v], 3))]);
    let rec = run_ok(&["run", "linear_attn", "--input", i, "--output", o, "--mode", "recurrent"], &out);
    let chunk = run_ok(&["run", "linear_attn", "--input", i, "--output", o, "--mode", "chunk"], &out);
    assert_eq!(shape(&rec, "o"), vec![b, tl, h, v]);
    assert_eq!(shape(&rec, "final_state"), vec![b, h, k, v]);
    let r64: Vec<f64> = rec["o"].1.iter().map(|&x| x as f64).collect();
    let scale = r64.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    for (j, (a, c)) in chunk["o"].1.iter().zip(&r64).enumerate() {
        assert!((*a as f64 - c).abs() <= 1e-4 * scale, "o[{j}]: chunk {a}, recurrent {c}");
    }
    write(&inp, &[("q", rand(&[b, h, k], 4)), ("k", rand(&[b, h, k], 5)), ("v", rand(&[b, h, v], 6)), ("state", T::F32(vec![b, h, k, v], rec["final_state"].1.clone()))]);
    let dec = run_ok(&["run", "linear_attn_decode", "--input", i, "--output", o, "--position", "70"], &out);
    assert_eq!(shape(&dec, "o"), vec![b, h, v]);
    assert_eq!(shape(&dec, "state"), vec![b, h, k, v]);

    // The OneForecast layer with its 23 documented weights (D 8, 2 heads) on the small graph.
    let layer = ffkern::ops::graph::OneForecastLayer { dim: 8, heads: 2, gate_hidden: 6, attn_hidden: 5, eps: 1e-5 };
    let mut tensors = vec![("e", rand(&[SRC.len(), 8], 1)), ("h", rand(&[4, 8], 2)), ("src", T::I64(SRC.to_vec())), ("dst", T::I64(DST.to_vec()))];
    for (p, (name, _, _)) in layer.seeded_params(DType::F32, 3).into_iter().zip(layer.param_shapes()) {
        tensors.push((name, T::F32(p.shape, p.data)));
    }
    write(&inp, &tensors);
    let t = run_ok(&["run", "oneforecast_layer", "--input", i, "--output", o, "--num-nodes", "4", "--heads", "2"], &out);
    assert_eq!(shape(&t, "e_out"), vec![SRC.len(), 8]);
    assert_eq!(shape(&t, "h_out"), vec![4, 8]);
    tensors.retain(|(n, _)| *n != "w_g2");
    write(&inp, &tensors);
    run_err(&["run", "oneforecast_layer", "--input", i, "--output", s(&dir.join("x.safetensors")), "--num-nodes", "4", "--heads", "2"], "'w_g2'");

    // The optimizer step and the normals.
    write(&inp, &[("param", rand(&[10], 1)), ("grad", rand(&[10], 2))]);
    let t = run_ok(&["run", "noisy_sgd", "--input", i, "--output", o, "--lr", "0.1", "--momentum", "0.9"], &out);
    assert_eq!(shape(&t, "param"), vec![10]);
    let t = run_ok(&["run", "philox_normal", "--n", "1000", "--seed", "4", "--output", o], &out);
    let z = &t["z"].1;
    let mean = z.iter().map(|&x| x as f64).sum::<f64>() / 1000.0;
    assert!(mean.abs() < 0.15, "mean of 1000 normals {mean}");
}
