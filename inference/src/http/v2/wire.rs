//! The binary tensor data extension of the Open Inference Protocol (KServe / Triton), as
//! `tritonclient` speaks it: a request or response body is a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the raw tensors, in the order the JSON
//! lists them, each as long as its `parameters.binary_data_size`. A BYTES tensor is its elements,
//! each a 4-byte little-endian length and the bytes; an FP32 tensor is little-endian floats.
//! Pure functions over bytes: no HTTP here.

/// The header that says how long the JSON part of a body is.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// `body` split into its JSON header and the binary part after it (empty when the body is all
/// JSON, `header_len` absent).
pub fn split(body: &[u8], header_len: Option<usize>) -> Result<(&[u8], &[u8]), String> {
    match header_len {
        None => Ok((body, &[])),
        Some(n) if n <= body.len() => Ok(body.split_at(n)),
        Some(n) => Err(format!(
            "{HEADER_LENGTH} is {n}, but the body has only {} bytes",
            body.len()
        )),
    }
}

/// Hands out the binary part's tensors in order.
pub struct Blobs<'a> {
    rest: &'a [u8],
}

impl<'a> Blobs<'a> {
    pub fn new(binary: &'a [u8]) -> Self {
        Self { rest: binary }
    }

    /// The next `size` bytes.
    pub fn take(&mut self, size: usize) -> Result<&'a [u8], String> {
        if size > self.rest.len() {
            return Err(format!(
                "binary_data_size is {size}, but only {} bytes of binary data are left",
                self.rest.len()
            ));
        }
        let (blob, rest) = self.rest.split_at(size);
        self.rest = rest;
        Ok(blob)
    }

    /// Bytes no tensor claimed (a malformed request when not zero).
    pub fn left(&self) -> usize {
        self.rest.len()
    }
}

/// A BYTES tensor's elements.
pub fn bytes_elements(blob: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut rest = blob;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(format!(
                "BYTES element {}: {} bytes left, too few for its 4-byte length",
                out.len(),
                rest.len()
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err(format!(
                "BYTES element {}: length {len}, but only {} bytes are left",
                out.len(),
                tail.len()
            ));
        }
        let (element, tail) = tail.split_at(len);
        out.push(element);
        rest = tail;
    }
    Ok(out)
}

/// An FP32 tensor's values.
pub fn f32_elements(blob: &[u8]) -> Result<Vec<f32>, String> {
    if !blob.len().is_multiple_of(4) {
        return Err(format!(
            "{} bytes is not a whole number of FP32 values",
            blob.len()
        ));
    }
    Ok(blob
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// A BYTES tensor in binary form.
pub fn encode_bytes<S: AsRef<[u8]>>(elements: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        let e = e.as_ref();
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// An FP32 tensor in binary form.
pub fn encode_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_truncation_is_named() {
        let blob = encode_bytes(&[&b"\xff\xd8ab"[..], b"", b"xyz"]);
        assert_eq!(blob.len(), 4 + 4 + 4 + 4 + 3);
        assert_eq!(
            bytes_elements(&blob).unwrap(),
            vec![&b"\xff\xd8ab"[..], b"", b"xyz"]
        );
        let err = bytes_elements(&blob[..blob.len() - 1]).unwrap_err();
        assert!(err.contains("element 2"), "{err}");
        assert!(
            bytes_elements(&blob[..2])
                .unwrap_err()
                .contains("4-byte length")
        );
    }

    #[test]
    fn the_body_splits_at_the_header_length_and_blobs_come_in_order() {
        let body = [&br#"{"a":1}"#[..], &[1, 2, 3, 4, 5]].concat();
        let (json, binary) = split(&body, Some(7)).unwrap();
        assert_eq!((json, binary), (&br#"{"a":1}"#[..], &[1, 2, 3, 4, 5][..]));
        assert!(split(&body, Some(99)).is_err());
        assert_eq!(split(&body, None).unwrap().1, &[] as &[u8]);
        let mut blobs = Blobs::new(binary);
        assert_eq!(blobs.take(2).unwrap(), &[1, 2]);
        assert!(blobs.take(4).is_err());
        assert_eq!(blobs.take(3).unwrap(), &[3, 4, 5]);
        assert_eq!(blobs.left(), 0);
        assert_eq!(
            f32_elements(&encode_f32(&[1.5, -2.0])).unwrap(),
            vec![1.5, -2.0]
        );
        assert!(f32_elements(&[0; 5]).is_err());
    }
}
