// Activations shared by every family (SPEC §1): identity 0, relu 1, silu 2, gelu_erf 3, gelu_tanh 4.

// erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit); WGSL has no erf builtin.
fn erf_f32(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277)))))))));
    return select(1.0 - r, r - 1.0, x < 0.0);
}

fn tanh_safe(x: f32) -> f32 {
    return tanh(clamp(x, -15.0, 15.0));
}

fn sigmoid_f32(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-clamp(x, -80.0, 80.0)));
}

fn activate(act: u32, x: f32) -> f32 {
    switch act {
        case 1u: { return max(x, 0.0); }
        case 5u: { return max(x, 0.2 * x); }
        case 2u: { return x * sigmoid_f32(x); }
        case 3u: { return 0.5 * x * (1.0 + erf_f32(x * 0.70710678118654752)); }
        case 4u: { return 0.5 * x * (1.0 + tanh_safe(0.79788456080286536 * (x + 0.044715 * x * x * x))); }
        default: { return x; }
    }
}

fn activate_grad(act: u32, x: f32) -> f32 {
    switch act {
        case 1u: { return select(0.0, 1.0, x > 0.0); }
        case 5u: { return select(0.2, 1.0, x > 0.0); }
        case 2u: {
            let s = sigmoid_f32(x);
            return s * (1.0 + x * (1.0 - s));
        }
        case 3u: {
            return 0.5 * (1.0 + erf_f32(x * 0.70710678118654752)) + x * exp(-0.5 * x * x) * 0.39894228040143268;
        }
        case 4u: {
            let c = 0.79788456080286536;
            let t = tanh_safe(c * (x + 0.044715 * x * x * x));
            return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
        }
        default: { return 1.0; }
    }
}
