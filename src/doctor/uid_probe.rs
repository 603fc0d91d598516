//! The smallest image cubbi can always make, for verify's Sysbox smoke test: one static
//! program that prints `/proc/self/uid_map` and exits, in an otherwise empty root. It is
//! generated here (a 200-byte ELF per architecture) and imported with `docker import`, so
//! the smoke test needs no registry, no base image and no earlier build.

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::TryStreamExt;
use sha2::Digest;

/// The repository the probe image is imported under; its tag is a hash of its content, so a
/// changed probe is imported anew and an unchanged one only once.
pub const REPOSITORY: &str = "cubbi-uid-probe";
/// The program's path inside the image.
pub const PROGRAM: &str = "/uid-map";

/// Where the code starts in memory: the ELF header and one program header come first.
const BASE_ADDRESS: u64 = 0x40_0000;
const HEADERS_LEN: usize = 64 + 56;

/// `open`/`read`/`write`/`exit` of `/proc/self/uid_map` into stdout, for x86-64 (Linux
/// syscall numbers 2, 0, 1, 60). The path follows the code; `lea` addresses it relative to
/// the next instruction.
#[rustfmt::skip]
const X86_64_CODE: &[u8] = &[
    0x48, 0x8d, 0x3d, 0x35, 0x00, 0x00, 0x00, // lea rdi, [rip + 53]   ; the path
    0x31, 0xf6,                               // xor esi, esi          ; O_RDONLY
    0xb8, 0x02, 0x00, 0x00, 0x00,             // mov eax, 2            ; open
    0x0f, 0x05,                               // syscall
    0x89, 0xc7,                               // mov edi, eax          ; fd
    0x48, 0x81, 0xec, 0x00, 0x02, 0x00, 0x00, // sub rsp, 512
    0x48, 0x89, 0xe6,                         // mov rsi, rsp          ; buffer
    0xba, 0x00, 0x02, 0x00, 0x00,             // mov edx, 512
    0x31, 0xc0,                               // xor eax, eax          ; read
    0x0f, 0x05,                               // syscall
    0x89, 0xc2,                               // mov edx, eax          ; bytes read
    0xbf, 0x01, 0x00, 0x00, 0x00,             // mov edi, 1            ; stdout
    0xb8, 0x01, 0x00, 0x00, 0x00,             // mov eax, 1            ; write
    0x0f, 0x05,                               // syscall
    0x31, 0xff,                               // xor edi, edi
    0xb8, 0x3c, 0x00, 0x00, 0x00,             // mov eax, 60           ; exit(0)
    0x0f, 0x05,                               // syscall
];

/// The same for arm64 (openat 56 with AT_FDCWD, read 63, write 64, exit 93); 19
/// instructions, then the path.
const AARCH64_CODE: &[u32] = &[
    0x1000_0261, // adr  x1, #76          ; the path
    0x9280_0c60, // movn x0, #99          ; AT_FDCWD (-100)
    0xd280_0002, // movz x2, #0           ; O_RDONLY
    0xd280_0003, // movz x3, #0
    0xd280_0708, // movz x8, #56          ; openat
    0xd400_0001, // svc  #0
    0xd108_03ff, // sub  sp, sp, #512
    0x9100_03e1, // mov  x1, sp           ; buffer
    0xd280_4002, // movz x2, #512
    0xd280_07e8, // movz x8, #63          ; read
    0xd400_0001, // svc  #0
    0xaa00_03e2, // mov  x2, x0           ; bytes read
    0xd280_0020, // movz x0, #1           ; stdout
    0x9100_03e1, // mov  x1, sp
    0xd280_0808, // movz x8, #64          ; write
    0xd400_0001, // svc  #0
    0xd280_0000, // movz x0, #0
    0xd280_0ba8, // movz x8, #93          ; exit
    0xd400_0001, // svc  #0
];

const PATH: &[u8] = b"/proc/self/uid_map\0";

/// The probe program for this machine's architecture (`None` where cubbi has none).
pub fn program() -> Option<Vec<u8>> {
    program_for(std::env::consts::ARCH)
}

fn program_for(arch: &str) -> Option<Vec<u8>> {
    let (machine, code): (u16, Vec<u8>) = match arch {
        "x86_64" => (0x3e, X86_64_CODE.to_vec()),
        "aarch64" => (
            0xb7,
            AARCH64_CODE
                .iter()
                .flat_map(|word| word.to_le_bytes())
                .collect(),
        ),
        _ => return None,
    };
    Some(static_elf(machine, &[code.as_slice(), PATH].concat()))
}

/// A minimal static executable: ELF header, one read+execute LOAD segment, the code.
fn static_elf(machine: u16, body: &[u8]) -> Vec<u8> {
    let total = (HEADERS_LEN + body.len()) as u64;
    let mut elf = Vec::with_capacity(total as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, little endian
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&machine.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&(BASE_ADDRESS + HEADERS_LEN as u64).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers follow this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // header size
    elf.extend_from_slice(&56u16.to_le_bytes()); // program header size
    elf.extend_from_slice(&1u16.to_le_bytes()); // one program header
    elf.extend_from_slice(&[0; 6]); // section header size, count, names index
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
    elf.extend_from_slice(&0u64.to_le_bytes()); // from the file's start
    elf.extend_from_slice(&BASE_ADDRESS.to_le_bytes()); // virtual address
    elf.extend_from_slice(&BASE_ADDRESS.to_le_bytes()); // physical address
    elf.extend_from_slice(&total.to_le_bytes()); // size in the file
    elf.extend_from_slice(&total.to_le_bytes()); // size in memory
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // alignment
    elf.extend_from_slice(body);
    elf
}

/// The image's root as a tar: the program plus the mount points a runtime expects.
fn rootfs_tar(program: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["proc", "sys", "dev", "etc", "tmp"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(program.len() as u64);
    builder.append_data(&mut header, PROGRAM.trim_start_matches('/'), program)?;
    builder.into_inner()
}

/// `cubbi-uid-probe:<hash>`, imported into the endpoint unless it is there already.
pub async fn ensure(docker: &Docker) -> Result<String, String> {
    let program = program().ok_or_else(|| {
        format!(
            "cubbi has no probe program for {}; run a container under sysbox-runc by hand \
             and read its /proc/self/uid_map",
            std::env::consts::ARCH
        )
    })?;
    let digest = sha2::Sha256::digest(&program);
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let reference = format!("{REPOSITORY}:{tag}");
    if docker.inspect_image(&reference).await.is_ok() {
        return Ok(reference);
    }
    let tar = rootfs_tar(&program).map_err(|err| format!("cannot pack the probe: {err}"))?;
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(REPOSITORY)
        .tag(&tag)
        .build();
    docker
        .create_image(Some(options), Some(bollard::body_full(tar.into())), None)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|err| format!("cannot import the probe image: {err}"))?;
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_architectures_have_a_well_formed_program() {
        for (arch, machine) in [("x86_64", 0x3e), ("aarch64", 0xb7)] {
            let elf = program_for(arch).unwrap();
            assert_eq!(&elf[..4], b"\x7fELF");
            assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), machine);
            let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
            assert_eq!(entry, BASE_ADDRESS + HEADERS_LEN as u64);
            assert!(elf.ends_with(PATH), "{arch}: the path closes the file");
        }
        assert!(program_for("riscv64").is_none());
    }

    #[test]
    fn the_arm64_adr_reaches_the_path() {
        // adr's immediate (immhi:immlo) is the byte offset from the instruction to the path.
        let adr = AARCH64_CODE[0];
        let offset = ((adr >> 5) & 0x7ffff) << 2 | ((adr >> 29) & 0x3);
        assert_eq!(offset as usize, AARCH64_CODE.len() * 4);
    }

    #[test]
    fn the_x86_64_lea_reaches_the_path() {
        let displacement = i32::from_le_bytes(X86_64_CODE[3..7].try_into().unwrap());
        assert_eq!(7 + displacement as usize, X86_64_CODE.len());
    }

    /// Runs the program on this host: it prints the same map as this process has.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_program_prints_this_process_uid_map() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uid-map");
        std::fs::write(&path, program().unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let output = std::process::Command::new(&path).output().unwrap();
        assert!(output.status.success(), "{:?}", output.status);
        let expected = std::fs::read_to_string("/proc/self/uid_map").unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    }

    #[test]
    fn the_rootfs_holds_the_program_and_mount_points() {
        let tar = rootfs_tar(b"program").unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|entry| entry.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"uid-map".to_string()), "{names:?}");
        assert!(names.contains(&"proc/".to_string()) || names.contains(&"proc".to_string()));
    }
}
