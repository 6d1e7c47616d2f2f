//! A tiny network client for the integration tests, run as a separate process so that it
//! can be placed in a cgroup and a network namespace of the test's choosing:
//!
//! - `nettool tcp ADDR MESSAGE`: connect, send, read to the end; prints `answer=…` and
//!   `peer=…` (what getpeername says).
//! - `nettool udp ADDR MESSAGE`: send one datagram from an unconnected socket; prints
//!   `answer=…` and `from=…` (where the reply came from).
//!
//! Every step has a timeout; failures exit non-zero with the error on stderr.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

fn run(args: &[String]) -> std::io::Result<String> {
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "usage: nettool tcp|udp ADDR MESSAGE",
        )
    };
    let [mode, addr, message] = args else {
        return Err(bad());
    };
    let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
    let timeout = Some(Duration::from_secs(3));
    match mode.as_str() {
        "tcp" => {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            stream.set_read_timeout(timeout)?;
            stream.write_all(message.as_bytes())?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(format!("answer={answer}\npeer={}", stream.peer_addr()?))
        }
        "udp" => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(timeout)?;
            socket.send_to(message.as_bytes(), addr)?;
            let mut buf = [0u8; 512];
            let (n, from) = socket.recv_from(&mut buf)?;
            Ok(format!(
                "answer={}\nfrom={from}",
                String::from_utf8_lossy(&buf[..n])
            ))
        }
        _ => Err(bad()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nettool: {e}");
            ExitCode::FAILURE
        }
    }
}
