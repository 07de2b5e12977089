//! What a router's relay of a large body costs per BLOB, copied through
//! user space (`read` + `write`, as the router relays a store node's answer
//! today) against `splice(2)` through a pipe (the relay issue 12 asks for):
//! a source sends BLOBs over loopback TCP, a relay thread moves them to a
//! sink, and the relay thread's own CPU time is measured
//! (`CLOCK_THREAD_CPUTIME_ID`). The sink checks every byte.
//!
//! ```sh
//! cargo run --release -p bench --bin relay-copy -- --size 1MiB --count 2000 --rounds 3
//! ```
//!
//! Prints one JSON object per run on stdout.

#![allow(clippy::print_stdout, reason = "the report is the program's output")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "CPU of relaying large bodies: user-space copy against splice(2)")]
struct Args {
    /// BLOB size (`1MiB`, `64KiB`, or bytes).
    #[arg(long, default_value = "1MiB", value_parser = bench::parse_size)]
    size: usize,
    /// BLOBs per run.
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// Runs of each way, alternated.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Copy,
    Splice,
}

/// Byte `i` of BLOB `blob`.
fn pattern(blob: u64, i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(blob.wrapping_mul(7))) as u8
}

/// This thread's CPU time in µs.
fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

fn source(listener: TcpListener, size: u64, count: u64) -> anyhow::Result<()> {
    let (mut out, _) = listener.accept()?;
    let mut blob = vec![0u8; size as usize];
    for n in 0..count {
        for (i, b) in blob.iter_mut().enumerate() {
            *b = pattern(n, i as u64);
        }
        out.write_all(&blob)?;
    }
    Ok(())
}

fn sink(mut from: TcpStream, size: u64, count: u64) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    for n in 0..count {
        let mut at = 0u64;
        while at < size {
            let want = buf.len().min((size - at) as usize);
            let got = from.read(&mut buf[..want])?;
            if got == 0 {
                bail!("relay closed at byte {at} of BLOB {n}");
            }
            for (i, b) in buf[..got].iter().enumerate() {
                if *b != pattern(n, at + i as u64) {
                    bail!("BLOB {n} byte {} differs", at + i as u64);
                }
            }
            at += got as u64;
        }
    }
    Ok(())
}

/// Moves `size` bytes from `up` to `down`, `count` times; returns the
/// relay thread's CPU µs.
fn relay(
    way: Way,
    mut up: TcpStream,
    mut down: TcpStream,
    size: u64,
    count: u64,
) -> anyhow::Result<f64> {
    let start = thread_cpu_us();
    match way {
        Way::Copy => {
            // hyper's largest read buffer is about this size.
            let mut buf = vec![0u8; 400 * 1024];
            for _ in 0..count {
                let mut left = size;
                while left > 0 {
                    let want = buf.len().min(left as usize);
                    let got = up.read(&mut buf[..want])?;
                    if got == 0 {
                        bail!("source closed");
                    }
                    down.write_all(&buf[..got])?;
                    left -= got as u64;
                }
            }
        }
        Way::Splice => {
            let mut fds = [0i32; 2];
            // SAFETY: `fds` has room for the two descriptors.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(std::io::Error::last_os_error()).context("pipe2");
            }
            let (pipe_read, pipe_write) = (fds[0], fds[1]);
            // A pipe of 1 MiB: fewer round trips through it.
            // SAFETY: plain fcntl on a descriptor this function owns.
            unsafe { libc::fcntl(pipe_write, libc::F_SETPIPE_SZ, 1 << 20) };
            let result = (|| {
                for _ in 0..count {
                    let mut left = size;
                    while left > 0 {
                        // SAFETY: valid descriptors; null offsets for sockets and pipes.
                        let into = unsafe {
                            libc::splice(
                                up.as_raw_fd(),
                                std::ptr::null_mut(),
                                pipe_write,
                                std::ptr::null_mut(),
                                left as usize,
                                libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
                            )
                        };
                        if into < 0 {
                            return Err(std::io::Error::last_os_error()).context("splice in");
                        }
                        if into == 0 {
                            bail!("source closed");
                        }
                        let mut pending = into as usize;
                        while pending > 0 {
                            // SAFETY: as above.
                            let out = unsafe {
                                libc::splice(
                                    pipe_read,
                                    std::ptr::null_mut(),
                                    down.as_raw_fd(),
                                    std::ptr::null_mut(),
                                    pending,
                                    libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
                                )
                            };
                            if out <= 0 {
                                return Err(std::io::Error::last_os_error()).context("splice out");
                            }
                            pending -= out as usize;
                        }
                        left -= into as u64;
                    }
                }
                Ok(())
            })();
            // SAFETY: closing the two descriptors this function opened.
            unsafe {
                libc::close(pipe_read);
                libc::close(pipe_write);
            }
            result?;
        }
    }
    down.flush()?;
    Ok(thread_cpu_us() - start)
}

fn run(way: Way, size: u64, count: u64) -> anyhow::Result<(f64, f64)> {
    let source_listener = TcpListener::bind("127.0.0.1:0")?;
    let source_addr = source_listener.local_addr()?;
    let relay_listener = TcpListener::bind("127.0.0.1:0")?;
    let relay_addr = relay_listener.local_addr()?;
    let source = std::thread::spawn(move || source(source_listener, size, count));
    let sink = std::thread::spawn(move || -> anyhow::Result<()> {
        sink(TcpStream::connect(relay_addr)?, size, count)
    });
    let up = TcpStream::connect(source_addr)?;
    let (down, _) = relay_listener.accept()?;
    let started = Instant::now();
    let cpu = relay(way, up, down, size, count)?;
    let wall = started.elapsed().as_secs_f64();
    source
        .join()
        .map_err(|_| anyhow::anyhow!("source panicked"))??;
    sink.join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))??;
    Ok((cpu / count as f64, wall))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for round in 1..=args.rounds {
        for way in [Way::Copy, Way::Splice] {
            let size = args.size as u64;
            let (cpu_per_blob, wall) = run(way, size, args.count)?;
            let mb_per_s = (size * args.count) as f64 / wall / 1e6;
            println!(
                "{}",
                serde_json::json!({
                    "round": round,
                    "way": format!("{way:?}").to_lowercase(),
                    "size_bytes": args.size,
                    "count": args.count,
                    "relay_cpu_us_per_blob": (cpu_per_blob * 10.0).round() / 10.0,
                    "mb_per_s": mb_per_s.round(),
                })
            );
        }
    }
    Ok(())
}
