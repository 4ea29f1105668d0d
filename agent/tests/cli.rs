//! The `shoal` binary refuses bad configuration at start with one clear line and exit code 2.

use std::process::Command;

fn shoal(args: &[&str], dir: &std::path::Path) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .current_dir(dir)
        .env_remove("SHOAL_LISTEN")
        .output()
        .expect("shoal runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_fails_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let cases: [(&[&str], &str); 7] = [
        (&["agent", "--listen", &taken, "--http", "off"], "--listen"),
        (
            &["agent", "--listen", "127.0.0.1:0", "--http", &taken],
            "--http",
        ),
        (&["agent", "--http", "somewhere"], "--http"),
        (
            &[
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "off",
                "--metadata",
                "mysql://db",
            ],
            "--metadata",
        ),
        (
            &[
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "off",
                "--objects",
                "ftp://x",
            ],
            "--objects",
        ),
        (
            &[
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "off",
                "--objects",
                "file:///proc/shoal-nope",
            ],
            "--objects",
        ),
        (&["agent", "--flush-bytes", "lots"], "--flush-bytes"),
    ];
    for (args, flag) in cases {
        let (code, stderr) = shoal(args, dir.path());
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?} names {flag}: {stderr}");
    }
}

#[test]
fn help_explains_the_agent_flags() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["agent", "--help"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--listen",
        "--advertise",
        "--http",
        "--metadata",
        "--objects",
        "--zone",
        "--flush-interval",
        "--flush-bytes",
    ] {
        assert!(help.contains(flag), "help mentions {flag}");
    }
}
