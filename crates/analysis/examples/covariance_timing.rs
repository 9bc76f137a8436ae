//! Cost of the streaming covariance behind effective dimensionality, per
//! image, for the feature counts of ResNet-18 (64..512) and ResNet-50 (2048):
//! `cargo run --release -p analysis --example covariance_timing [IMAGES]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let images: usize = match std::env::args().nth(1) {
        Some(text) => text
            .parse()
            .map_err(|_| format!("IMAGES must be a whole number, got {text:?}"))?,
        None => 20_000,
    };
    println!("threads: {}", rayon::current_num_threads());
    println!("| features | batch | images | update total (s) | update per image (us) | eigenvalues (s) |");
    println!("|---|---|---|---|---|---|");
    for d in [64, 128, 256, 512, 2048] {
        let t = analysis::dimensionality::time_covariance(d, 256, images)?;
        println!(
            "| {} | {} | {} | {:.3} | {:.2} | {:.3} |",
            t.features, t.batch, t.images, t.update_seconds, t.update_us_per_image, t.eigen_seconds
        );
    }
    Ok(())
}
