//! ResNet50 on cuDNN and cuBLAS (the `cuda` feature): the weights uploaded once ([`GpuNet`]);
//! per model thread a [`Lane`] with its own stream, cuDNN and cuBLAS handles, activation
//! buffers, pinned host buffers and one [`Plan`] per batch bucket. Two lanes let one batch's host
//! work and copies overlap the other's kernels.
//!
//! A plan is the forward pass as a list of cuDNN/cuBLAS calls on fixed buffers: the input's
//! layout change (NCHW f16 → NHWC, channels padded), each convolution as one fused call
//! (convolution + bias + ReLU, with the shortcut added in for the last of a block), the pools,
//! and the classifier (f16 GEMM into f32 logits + bias). Each convolution's algorithm is the
//! first in cuDNN's heuristic order for that shape on this GPU that runs fused (or, with
//! `find`, the fastest it measures); shapes are chosen once per process. The plan is then captured as a CUDA graph and
//! replayed: ~60 calls become one launch.
//!
//! Raw handles and device pointers throughout: the buffers live as long as the lane, and
//! cudarc's per-slice event tracking (off for this context) would not survive graph capture.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, c_void};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail, ensure};
use cudarc::cublas::sys as blas;
use cudarc::cudnn::sys as dnn;
use cudarc::driver::{
    CudaContext, CudaGraph, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice, result as drv,
    sys as drv_sys,
};
use half::f16;
use rayon::prelude::*;

use super::{batch_buckets, bucket_for, out_size, pack_filter_nhwc, stem_channels, to_f16_into};
use crate::model::fold::folded_conv;
use crate::model::weights::{self, NUM_CLASSES, Weights};
use crate::preprocess::{INPUT_LEN, INPUT_SIZE};

/// Most scratch memory one convolution algorithm may use.
const WORKSPACE_BYTES: usize = 256 << 20;
/// cuBLAS's own scratch, set explicitly so it never allocates while a graph is captured.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;
const FEATURES: usize = 2048;

/// How a lane runs its plans.
#[derive(Clone, Copy, Debug)]
pub struct GpuOptions {
    /// Replay each plan as a CUDA graph (else launch call by call).
    pub graphs: bool,
    /// Fuse bias, shortcut and ReLU into the convolution call (else separate cuDNN calls).
    pub fused: bool,
    /// Measure algorithms (`cudnnFindConvolutionForwardAlgorithmEx`, plain convolutions)
    /// rather than take cuDNN's heuristic order. Off: on an H200 the measured choices ran the
    /// fused calls as fast at batch 128 and 5 to 7 times slower at batch 8 and 1.
    pub find: bool,
    /// Channels the image is padded to for the first convolution (3 to 8).
    pub stem_channels: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            graphs: true,
            fused: true,
            find: false,
            stem_channels: 4,
        }
    }
}

fn dnn_check(s: dnn::cudnnStatus_t, what: &str) -> Result<()> {
    if s == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        return Ok(());
    }
    // SAFETY: cudnnGetErrorString returns a static C string for any status.
    let msg = unsafe { CStr::from_ptr(dnn::cudnnGetErrorString(s)) }.to_string_lossy();
    bail!("cuDNN {what}: {msg}")
}

fn blas_check(s: blas::cublasStatus_t, what: &str) -> Result<()> {
    if s == blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Ok(());
    }
    bail!("cuBLAS {what}: {s:?}")
}

/// A device buffer's address (event tracking is off for our context: nothing is recorded).
fn addr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

fn vp(p: u64) -> *const c_void {
    p as usize as *const c_void
}

fn vpm(p: u64) -> *mut c_void {
    p as usize as *mut c_void
}

const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

macro_rules! descriptor {
    ($name:ident, $raw:ty, $create:ident, $destroy:ident) => {
        struct $name($raw);
        impl $name {
            fn new() -> Result<Self> {
                let mut d = std::ptr::null_mut();
                // SAFETY: writes one descriptor handle into `d`.
                dnn_check(unsafe { dnn::$create(&mut d) }, stringify!($create))?;
                Ok(Self(d))
            }
        }
        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: created by `new`, destroyed once.
                let _ = unsafe { dnn::$destroy(self.0) };
            }
        }
    };
}
descriptor!(
    TensorDesc,
    dnn::cudnnTensorDescriptor_t,
    cudnnCreateTensorDescriptor,
    cudnnDestroyTensorDescriptor
);
descriptor!(
    FilterDesc,
    dnn::cudnnFilterDescriptor_t,
    cudnnCreateFilterDescriptor,
    cudnnDestroyFilterDescriptor
);
descriptor!(
    ConvDesc,
    dnn::cudnnConvolutionDescriptor_t,
    cudnnCreateConvolutionDescriptor,
    cudnnDestroyConvolutionDescriptor
);
descriptor!(
    PoolDesc,
    dnn::cudnnPoolingDescriptor_t,
    cudnnCreatePoolingDescriptor,
    cudnnDestroyPoolingDescriptor
);
descriptor!(
    ActDesc,
    dnn::cudnnActivationDescriptor_t,
    cudnnCreateActivationDescriptor,
    cudnnDestroyActivationDescriptor
);

fn ci(v: usize) -> i32 {
    i32::try_from(v).expect("tensor dimension fits i32")
}

impl TensorDesc {
    /// (n, c, h, w) f16 stored NHWC.
    fn nhwc(n: usize, c: usize, h: usize, w: usize) -> Result<Self> {
        let d = Self::new()?;
        // SAFETY: a live descriptor.
        dnn_check(
            unsafe {
                dnn::cudnnSetTensor4dDescriptor(
                    d.0,
                    dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
                    dnn::cudnnDataType_t::CUDNN_DATA_HALF,
                    ci(n),
                    ci(c),
                    ci(h),
                    ci(w),
                )
            },
            "tensor descriptor",
        )?;
        Ok(d)
    }

    /// (n, c, h, w) with explicit strides, in `dtype`.
    fn strided(
        dtype: dnn::cudnnDataType_t,
        [n, c, h, w]: [usize; 4],
        [sn, sc, sh, sw]: [usize; 4],
    ) -> Result<Self> {
        let d = Self::new()?;
        // SAFETY: a live descriptor.
        dnn_check(
            unsafe {
                dnn::cudnnSetTensor4dDescriptorEx(
                    d.0,
                    dtype,
                    ci(n),
                    ci(c),
                    ci(h),
                    ci(w),
                    ci(sn),
                    ci(sc),
                    ci(sh),
                    ci(sw),
                )
            },
            "strided tensor descriptor",
        )?;
        Ok(d)
    }

    /// (n, c, 1, 1) f32, packed.
    fn f32_rows(n: usize, c: usize) -> Result<Self> {
        Self::strided(
            dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
            [n, c, 1, 1],
            [c, 1, 1, 1],
        )
    }
}

/// One convolution's weights on the device, BatchNorm folded in, NHWC f16.
struct ConvWeights {
    w: CudaSlice<f16>,
    b: CudaSlice<f16>,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

struct Block {
    conv1: ConvWeights,
    conv2: ConvWeights,
    conv3: ConvWeights,
    downsample: Option<ConvWeights>,
}

/// Algorithm measured for one convolution shape: (algorithm, math type, runs fused).
type Choice = (dnn::cudnnConvolutionFwdAlgo_t, dnn::cudnnMathType_t, bool);

/// The network's weights on the GPU, shared by every lane.
pub struct GpuNet {
    ctx: Arc<CudaContext>,
    stem: ConvWeights,
    blocks: Vec<Block>,
    fc_w: CudaSlice<f16>, // (classes, 2048), row-major
    fc_b: CudaSlice<f32>,
    opts: GpuOptions,
    /// Algorithm per convolution shape, measured by the first lane that needs it.
    choices: Mutex<HashMap<ConvKey, Choice>>,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ConvKey {
    n: usize,
    cin: usize,
    hw: usize,
    cout: usize,
    k: usize,
    stride: usize,
    relu: bool,
    residual: bool,
}

impl GpuNet {
    /// Folds and uploads `w` (tensors on the CPU) to GPU `ordinal`.
    pub fn new(w: &Weights, ordinal: usize, opts: GpuOptions) -> Result<Arc<Self>> {
        let ctx = CudaContext::new(ordinal).context("open the CUDA device")?;
        // SAFETY: nothing has been allocated through this context handle yet; every buffer is
        // used through raw pointers on one stream per lane, synchronized explicitly.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let opts = GpuOptions {
            stem_channels: stem_channels(opts.stem_channels),
            ..opts
        };
        let conv = |conv: &str,
                    bn: &str,
                    stride: usize,
                    pad: usize,
                    cin_pad: usize|
         -> Result<ConvWeights> {
            let (weight, bias) = folded_conv(w, conv, bn).map_err(|e| anyhow!("{conv}: {e}"))?;
            let (o, i, kh, kw) = weight.dims4()?;
            ensure!(kh == kw, "{conv}: {kh}x{kw} kernels are not square");
            let host: Vec<f32> = weight.flatten_all()?.to_vec1()?;
            let packed = pack_filter_nhwc(&host, [o, i, kh, kw], cin_pad.max(i));
            let b: Vec<f16> = bias
                .to_vec1::<f32>()?
                .into_iter()
                .map(f16::from_f32)
                .collect();
            Ok(ConvWeights {
                w: stream.clone_htod(&packed)?,
                b: stream.clone_htod(&b)?,
                cin: cin_pad.max(i),
                cout: o,
                k: kh,
                stride,
                pad,
            })
        };
        let stem = conv("conv1", "bn1", 2, 3, opts.stem_channels)?;
        let mut blocks = Vec::new();
        for spec in weights::blocks() {
            let p = &spec.prefix;
            let c = |name: &str, bn: &str, stride, pad| {
                conv(&format!("{p}.{name}"), &format!("{p}.{bn}"), stride, pad, 0)
            };
            blocks.push(Block {
                conv1: c("conv1", "bn1", 1, 0)?,
                conv2: c("conv2", "bn2", spec.stride, 1)?,
                conv3: c("conv3", "bn3", 1, 0)?,
                downsample: spec
                    .downsample
                    .then(|| c("downsample.0", "downsample.1", spec.stride, 0))
                    .transpose()?,
            });
        }
        let fc_w: Vec<f16> = w.tensors["fc.weight"]
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f16::from_f32)
            .collect();
        ensure!(
            fc_w.len() == NUM_CLASSES * FEATURES,
            "fc.weight is not 1000x2048"
        );
        let fc_b: Vec<f32> = w.tensors["fc.bias"].to_vec1()?;
        let net = Self {
            fc_w: stream.clone_htod(&fc_w)?,
            fc_b: stream.clone_htod(&fc_b)?,
            ctx: ctx.clone(),
            stem,
            blocks,
            opts,
            choices: Mutex::new(HashMap::new()),
        };
        stream.synchronize()?;
        Ok(Arc::new(net))
    }
}

/// One convolution call of a plan.
struct ConvCall {
    x_desc: TensorDesc,
    w_desc: FilterDesc,
    conv_desc: ConvDesc,
    y_desc: TensorDesc,
    bias_desc: TensorDesc,
    x: u64,
    w: u64,
    bias: u64,
    y: u64,
    /// Shortcut added before the ReLU.
    z: Option<u64>,
    relu: bool,
    key: ConvKey,
    algo: dnn::cudnnConvolutionFwdAlgo_t,
    fused: bool,
}

struct PoolCall {
    desc: PoolDesc,
    x_desc: TensorDesc,
    x: u64,
    y_desc: TensorDesc,
    y: u64,
}

/// The forward pass for one batch size, on the lane's buffers.
struct Plan {
    n: usize,
    /// Staged NCHW f16 image → the first convolution's NHWC input.
    input: (TensorDesc, TensorDesc),
    stem: ConvCall,
    maxpool: PoolCall,
    convs: Vec<ConvCall>,
    avgpool: PoolCall,
    logits_desc: TensorDesc,
    fc_bias_desc: TensorDesc,
    graph: Option<CudaGraph>,
}

/// A pinned host buffer, addressed directly.
struct Pinned<T> {
    _mem: PinnedHostSlice<T>,
    ptr: *mut T,
    len: usize,
}

impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> Pinned<T> {
    fn new(ctx: &Arc<CudaContext>, len: usize, write_combined: bool) -> Result<Self> {
        let flags = if write_combined {
            drv_sys::CU_MEMHOSTALLOC_WRITECOMBINED
        } else {
            0
        };
        // SAFETY: the memory is written before it is read (input) or read after a copy into it.
        let mut mem = unsafe { ctx.alloc_pinned_with_flags::<T>(len, flags) }?;
        let ptr = mem.as_mut_ptr()?;
        Ok(Self {
            _mem: mem,
            ptr,
            len,
        })
    }

    fn slice_mut(&mut self, n: usize) -> &mut [T] {
        assert!(n <= self.len);
        // SAFETY: `ptr` holds `len` elements for as long as `_mem` lives; `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, n) }
    }
}

/// One model thread's share of the GPU.
pub struct Lane {
    net: Arc<GpuNet>,
    stream: Arc<CudaStream>,
    cudnn: dnn::cudnnHandle_t,
    cublas: blas::cublasHandle_t,
    relu: ActDesc,
    buckets: Vec<usize>,
    plans: BTreeMap<usize, Plan>,
    // Device buffers, each sized for the largest bucket.
    staged: CudaSlice<f16>,   // NCHW f16 images as uploaded
    stem_in: CudaSlice<f16>,  // NHWC, channels padded (the padding stays zero)
    act: [CudaSlice<f16>; 5], // block in/out ping-pong, two temporaries, shortcut
    pooled: CudaSlice<f16>,
    logits: CudaSlice<f32>,
    workspace: CudaSlice<u8>,
    _cublas_workspace: CudaSlice<u8>,
    host_in: Pinned<f16>,
    host_out: Pinned<f32>,
}

// SAFETY: a lane is used by one thread at a time (it moves to its model thread); its handles
// and pointers belong to the CUDA context, which any thread may bind.
unsafe impl Send for Lane {}

impl Drop for Lane {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        self.plans.clear(); // graphs and descriptors before the handles
        // SAFETY: created in `Lane::new`, destroyed once.
        unsafe {
            let _ = dnn::cudnnDestroy(self.cudnn);
            let _ = blas::cublasDestroy_v2(self.cublas);
        }
    }
}

/// Elements in the largest activation of one image: 112·112·64 = 56·56·256.
const ACT_PER_IMAGE: usize = 112 * 112 * 64;

impl Lane {
    /// A lane for batches of up to `max_batch` images; builds (and captures) every bucket's
    /// plan now, so no request pays for it.
    pub fn new(net: Arc<GpuNet>, max_batch: usize) -> Result<Self> {
        Self::with_buckets(net, batch_buckets(max_batch))
    }

    /// A lane with plans for exactly these batch sizes (benchmarks).
    pub fn with_buckets(net: Arc<GpuNet>, mut buckets: Vec<usize>) -> Result<Self> {
        buckets.sort_unstable();
        buckets.dedup();
        ensure!(buckets.first().is_some_and(|&b| b > 0), "no batch sizes");
        let ctx = net.ctx.clone();
        ctx.bind_to_thread()?;
        let stream = ctx.new_stream()?;
        let max = *buckets.last().expect("at least one bucket");
        let mut cudnn = std::ptr::null_mut();
        // SAFETY: plain handle creation; the stream outlives the handle (both in the lane).
        unsafe {
            dnn_check(dnn::cudnnCreate(&mut cudnn), "create handle")?;
            dnn_check(
                dnn::cudnnSetStream(cudnn, stream.cu_stream() as _),
                "set stream",
            )?;
        }
        let mut cublas = std::ptr::null_mut();
        // SAFETY: as above.
        unsafe {
            blas_check(blas::cublasCreate_v2(&mut cublas), "create handle")?;
            blas_check(
                blas::cublasSetStream_v2(cublas, stream.cu_stream() as _),
                "set stream",
            )?;
        }
        let relu = ActDesc::new()?;
        // SAFETY: a live descriptor.
        dnn_check(
            unsafe {
                dnn::cudnnSetActivationDescriptor(
                    relu.0,
                    dnn::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
                    dnn::cudnnNanPropagation_t::CUDNN_NOT_PROPAGATE_NAN,
                    0.0,
                )
            },
            "activation descriptor",
        )?;
        let cublas_ws = stream.alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES)?;
        // SAFETY: the workspace lives as long as the handle (both in the lane).
        blas_check(
            unsafe {
                blas::cublasSetWorkspace_v2(
                    cublas,
                    vpm(addr(&cublas_ws, &stream)),
                    CUBLAS_WORKSPACE_BYTES,
                )
            },
            "set workspace",
        )?;
        let sc = net.opts.stem_channels;
        let act = |n: usize| stream.alloc_zeros::<f16>(n);
        let mut lane = Self {
            staged: act(max * INPUT_LEN)?,
            stem_in: act(max * INPUT_SIZE * INPUT_SIZE * sc)?,
            act: [
                act(max * ACT_PER_IMAGE)?,
                act(max * ACT_PER_IMAGE)?,
                act(max * ACT_PER_IMAGE)?,
                act(max * ACT_PER_IMAGE)?,
                act(max * ACT_PER_IMAGE)?,
            ],
            pooled: act(max * FEATURES)?,
            logits: stream.alloc_zeros::<f32>(max * NUM_CLASSES)?,
            workspace: stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?,
            _cublas_workspace: cublas_ws,
            host_in: Pinned::new(&ctx, max * INPUT_LEN, true)?,
            host_out: Pinned::new(&ctx, max * NUM_CLASSES, false)?,
            net,
            stream,
            cudnn,
            cublas,
            relu,
            buckets: buckets.clone(),
            plans: BTreeMap::new(),
        };
        lane.stream.synchronize()?;
        for &n in &buckets {
            let plan = lane
                .build_plan(n)
                .with_context(|| format!("plan for batch {n}"))?;
            lane.plans.insert(n, plan);
        }
        Ok(lane)
    }

    /// Which bucket sizes this lane has plans for.
    pub fn buckets(&self) -> &[usize] {
        &self.buckets
    }

    /// Whether bucket `n` replays a CUDA graph.
    pub fn graphed(&self, n: usize) -> bool {
        self.plans.get(&n).is_some_and(|p| p.graph.is_some())
    }

    fn conv_call(
        &self,
        cw: &ConvWeights,
        n: usize,
        hw: usize,
        // Input, output, and the shortcut added before the ReLU.
        (x, y, z): (u64, u64, Option<u64>),
        relu: bool,
    ) -> Result<(ConvCall, usize)> {
        let out = out_size(hw, cw.k, cw.stride, cw.pad);
        let x_desc = TensorDesc::nhwc(n, cw.cin, hw, hw)?;
        let y_desc = TensorDesc::nhwc(n, cw.cout, out, out)?;
        let bias_desc = TensorDesc::nhwc(1, cw.cout, 1, 1)?;
        let w_desc = FilterDesc::new()?;
        let conv_desc = ConvDesc::new()?;
        // SAFETY: live descriptors.
        unsafe {
            dnn_check(
                dnn::cudnnSetFilter4dDescriptor(
                    w_desc.0,
                    dnn::cudnnDataType_t::CUDNN_DATA_HALF,
                    dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
                    ci(cw.cout),
                    ci(cw.cin),
                    ci(cw.k),
                    ci(cw.k),
                ),
                "filter descriptor",
            )?;
            dnn_check(
                dnn::cudnnSetConvolution2dDescriptor(
                    conv_desc.0,
                    ci(cw.pad),
                    ci(cw.pad),
                    ci(cw.stride),
                    ci(cw.stride),
                    1,
                    1,
                    dnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    // f16 in and out, f32 accumulation (PyTorch's choice too).
                    dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
                ),
                "convolution descriptor",
            )?;
            dnn_check(
                dnn::cudnnSetConvolutionMathType(
                    conv_desc.0,
                    dnn::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
                ),
                "math type",
            )?;
        }
        let key = ConvKey {
            n,
            cin: cw.cin,
            hw,
            cout: cw.cout,
            k: cw.k,
            stride: cw.stride,
            relu,
            residual: z.is_some(),
        };
        let s = &self.stream;
        Ok((
            ConvCall {
                x_desc,
                w_desc,
                conv_desc,
                y_desc,
                bias_desc,
                x,
                w: addr(&cw.w, s),
                bias: addr(&cw.b, s),
                y,
                z,
                relu,
                key,
                algo:
                    dnn::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                fused: false,
            },
            out,
        ))
    }

    fn pool_call(
        &self,
        mode: dnn::cudnnPoolingMode_t,
        (n, c, hw): (usize, usize, usize),
        (k, stride, pad): (usize, usize, usize),
        x: u64,
        y: u64,
    ) -> Result<(PoolCall, usize)> {
        let out = out_size(hw, k, stride, pad);
        let desc = PoolDesc::new()?;
        // SAFETY: a live descriptor.
        dnn_check(
            unsafe {
                dnn::cudnnSetPooling2dDescriptor(
                    desc.0,
                    mode,
                    dnn::cudnnNanPropagation_t::CUDNN_NOT_PROPAGATE_NAN,
                    ci(k),
                    ci(k),
                    ci(pad),
                    ci(pad),
                    ci(stride),
                    ci(stride),
                )
            },
            "pooling descriptor",
        )?;
        Ok((
            PoolCall {
                desc,
                x_desc: TensorDesc::nhwc(n, c, hw, hw)?,
                x,
                y_desc: TensorDesc::nhwc(n, c, out, out)?,
                y,
            },
            out,
        ))
    }

    fn build_plan(&mut self, n: usize) -> Result<Plan> {
        let s = &self.stream;
        let net = self.net.clone();
        let sc = net.opts.stem_channels;
        let [a, b, t1, t2, short] = self.act.each_ref().map(|x| addr(x, s));
        let staged = TensorDesc::strided(
            dnn::cudnnDataType_t::CUDNN_DATA_HALF,
            [n, 3, INPUT_SIZE, INPUT_SIZE],
            [INPUT_LEN, INPUT_SIZE * INPUT_SIZE, INPUT_SIZE, 1],
        )?;
        // The first 3 of `sc` NHWC channels; the rest stay zero.
        let stem_in = TensorDesc::strided(
            dnn::cudnnDataType_t::CUDNN_DATA_HALF,
            [n, 3, INPUT_SIZE, INPUT_SIZE],
            [INPUT_SIZE * INPUT_SIZE * sc, 1, INPUT_SIZE * sc, sc],
        )?;
        let (stem, hw) = self.conv_call(
            &net.stem,
            n,
            INPUT_SIZE,
            (addr(&self.stem_in, s), b, None),
            true,
        )?;
        let (maxpool, mut hw) = self.pool_call(
            dnn::cudnnPoolingMode_t::CUDNN_POOLING_MAX,
            (n, net.stem.cout, hw),
            (3, 2, 1),
            b,
            a,
        )?;
        let mut convs = Vec::new();
        let (mut cur, mut next) = (a, b);
        let mut channels = net.stem.cout;
        for blk in &net.blocks {
            let (c1, h1) = self.conv_call(&blk.conv1, n, hw, (cur, t1, None), true)?;
            let (c2, h2) = self.conv_call(&blk.conv2, n, h1, (t1, t2, None), true)?;
            let shortcut = match &blk.downsample {
                Some(d) => {
                    let (ds, _) = self.conv_call(d, n, hw, (cur, short, None), false)?;
                    convs.push(ds);
                    short
                }
                None => cur,
            };
            let (c3, h3) = self.conv_call(&blk.conv3, n, h2, (t2, next, Some(shortcut)), true)?;
            convs.push(c1);
            convs.push(c2);
            convs.push(c3);
            hw = h3;
            channels = blk.conv3.cout;
            std::mem::swap(&mut cur, &mut next);
        }
        ensure!(
            channels == FEATURES && hw == 7,
            "unexpected final shape {channels}x{hw}x{hw}"
        );
        let (avgpool, _) = self.pool_call(
            dnn::cudnnPoolingMode_t::CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING,
            (n, FEATURES, hw),
            (hw, hw, 0),
            cur,
            addr(&self.pooled, s),
        )?;
        let mut plan = Plan {
            n,
            input: (staged, stem_in),
            stem,
            maxpool,
            convs,
            avgpool,
            logits_desc: TensorDesc::f32_rows(n, NUM_CLASSES)?,
            fc_bias_desc: TensorDesc::f32_rows(1, NUM_CLASSES)?,
            graph: None,
        };
        self.choose_algorithms(&mut plan)?;
        // One eager pass (loads every kernel) before the capture.
        self.run_eager(&plan)?;
        self.stream.synchronize()?;
        if net.opts.graphs {
            match self.capture(&plan) {
                Ok(g) => plan.graph = Some(g),
                Err(e) => {
                    tracing::warn!(batch = n, error = %format!("{e:#}"), "CUDA graph capture failed; this batch size runs call by call")
                }
            }
        }
        Ok(plan)
    }

    fn choose_algorithms(&self, plan: &mut Plan) -> Result<()> {
        let Plan { stem, convs, .. } = plan;
        for call in std::iter::once(stem).chain(convs.iter_mut()) {
            let cached = self
                .net
                .choices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&call.key)
                .copied();
            let choice = match cached {
                Some(c) => c,
                None => {
                    let c = self
                        .measure(call)
                        .with_context(|| format!("convolution {:?}", call.key))?;
                    self.net
                        .choices
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(call.key, c);
                    c
                }
            };
            call.algo = choice.0;
            call.fused = choice.2;
            // SAFETY: a live descriptor.
            dnn_check(
                unsafe { dnn::cudnnSetConvolutionMathType(call.conv_desc.0, choice.1) },
                "math type",
            )?;
        }
        Ok(())
    }

    /// The fastest algorithm for `call`'s shape that runs (fused, where asked and possible).
    fn measure(&self, call: &mut ConvCall) -> Result<Choice> {
        const MAX_ALGOS: usize = 16;
        // SAFETY: zeroed perf structs are valid (plain data, enum fields at discriminant 0).
        let mut perf: [dnn::cudnnConvolutionFwdAlgoPerf_t; MAX_ALGOS] =
            unsafe { std::mem::zeroed() };
        let mut count = 0;
        let ws = addr(&self.workspace, &self.stream);
        // SAFETY: descriptors match the buffers (sized for the largest bucket).
        unsafe {
            if self.net.opts.find {
                dnn_check(
                    dnn::cudnnFindConvolutionForwardAlgorithmEx(
                        self.cudnn,
                        call.x_desc.0,
                        vp(call.x),
                        call.w_desc.0,
                        vp(call.w),
                        call.conv_desc.0,
                        call.y_desc.0,
                        vpm(call.y),
                        MAX_ALGOS as i32,
                        &mut count,
                        perf.as_mut_ptr(),
                        vpm(ws),
                        WORKSPACE_BYTES,
                    ),
                    "find algorithm",
                )?;
            } else {
                dnn_check(
                    dnn::cudnnGetConvolutionForwardAlgorithm_v7(
                        self.cudnn,
                        call.x_desc.0,
                        call.w_desc.0,
                        call.conv_desc.0,
                        call.y_desc.0,
                        MAX_ALGOS as i32,
                        &mut count,
                        perf.as_mut_ptr(),
                    ),
                    "algorithm heuristics",
                )?;
            }
        }
        let usable: Vec<_> = perf[..count.max(0) as usize]
            .iter()
            .filter(|p| {
                p.status == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS && p.memory <= WORKSPACE_BYTES
            })
            .copied()
            .collect();
        ensure!(!usable.is_empty(), "cuDNN offers no algorithm");
        // Fused first, in cuDNN's order of speed; then the plain calls.
        let fuse_modes: &[bool] = if self.net.opts.fused && call.relu {
            &[true, false]
        } else {
            &[false]
        };
        let mut last_err = None;
        for &fused in fuse_modes {
            for p in &usable {
                // SAFETY: a live descriptor.
                dnn_check(
                    unsafe { dnn::cudnnSetConvolutionMathType(call.conv_desc.0, p.mathType) },
                    "math type",
                )?;
                call.algo = p.algo;
                call.fused = fused;
                match self
                    .run_conv(call)
                    .and_then(|_| Ok(self.stream.synchronize()?))
                {
                    Ok(()) => return Ok((p.algo, p.mathType, fused)),
                    Err(e) => last_err = Some(e),
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no algorithm ran")))
    }

    fn run_conv(&self, c: &ConvCall) -> Result<()> {
        let h = self.cudnn;
        let ws = vpm(addr(&self.workspace, &self.stream));
        let one = &ONE as *const f32 as *const c_void;
        let zero = &ZERO as *const f32 as *const c_void;
        // SAFETY: descriptors and buffers were built together for this plan; the workspace
        // holds WORKSPACE_BYTES and every chosen algorithm needs at most that.
        unsafe {
            if c.fused {
                let (z, alpha2) = match c.z {
                    Some(z) => (z, &ONE),
                    None => (c.y, &ZERO),
                };
                dnn_check(
                    dnn::cudnnConvolutionBiasActivationForward(
                        h,
                        one,
                        c.x_desc.0,
                        vp(c.x),
                        c.w_desc.0,
                        vp(c.w),
                        c.conv_desc.0,
                        c.algo,
                        ws,
                        WORKSPACE_BYTES,
                        alpha2 as *const f32 as *const c_void,
                        c.y_desc.0,
                        vp(z),
                        c.bias_desc.0,
                        vp(c.bias),
                        self.relu.0,
                        c.y_desc.0,
                        vpm(c.y),
                    ),
                    "fused convolution",
                )
            } else {
                dnn_check(
                    dnn::cudnnConvolutionForward(
                        h,
                        one,
                        c.x_desc.0,
                        vp(c.x),
                        c.w_desc.0,
                        vp(c.w),
                        c.conv_desc.0,
                        c.algo,
                        ws,
                        WORKSPACE_BYTES,
                        zero,
                        c.y_desc.0,
                        vpm(c.y),
                    ),
                    "convolution",
                )?;
                dnn_check(
                    dnn::cudnnAddTensor(
                        h,
                        one,
                        c.bias_desc.0,
                        vp(c.bias),
                        one,
                        c.y_desc.0,
                        vpm(c.y),
                    ),
                    "bias",
                )?;
                if let Some(z) = c.z {
                    dnn_check(
                        dnn::cudnnAddTensor(h, one, c.y_desc.0, vp(z), one, c.y_desc.0, vpm(c.y)),
                        "shortcut",
                    )?;
                }
                if c.relu {
                    dnn_check(
                        dnn::cudnnActivationForward(
                            h,
                            self.relu.0,
                            one,
                            c.y_desc.0,
                            vp(c.y),
                            zero,
                            c.y_desc.0,
                            vpm(c.y),
                        ),
                        "relu",
                    )?;
                }
                Ok(())
            }
        }
    }

    fn run_pool(&self, p: &PoolCall) -> Result<()> {
        let one = &ONE as *const f32 as *const c_void;
        let zero = &ZERO as *const f32 as *const c_void;
        // SAFETY: descriptors and buffers built together.
        dnn_check(
            unsafe {
                dnn::cudnnPoolingForward(
                    self.cudnn,
                    p.desc.0,
                    one,
                    p.x_desc.0,
                    vp(p.x),
                    zero,
                    p.y_desc.0,
                    vpm(p.y),
                )
            },
            "pooling",
        )
    }

    /// Every call of `plan`, in order, on the lane's stream.
    fn run_eager(&self, plan: &Plan) -> Result<()> {
        let s = &self.stream;
        let one = &ONE as *const f32 as *const c_void;
        let zero = &ZERO as *const f32 as *const c_void;
        // SAFETY: descriptors built for these buffers.
        dnn_check(
            unsafe {
                dnn::cudnnTransformTensor(
                    self.cudnn,
                    one,
                    plan.input.0.0,
                    vp(addr(&self.staged, s)),
                    zero,
                    plan.input.1.0,
                    vpm(addr(&self.stem_in, s)),
                )
            },
            "input layout",
        )?;
        self.run_conv(&plan.stem)?;
        self.run_pool(&plan.maxpool)?;
        for c in &plan.convs {
            self.run_conv(c)?;
        }
        self.run_pool(&plan.avgpool)?;
        // logits (n × classes, row-major) = pooled (n × 2048) · fc_wᵀ, as column-major:
        // logitsᵀ (classes × n) = fc_w (2048 × classes)ᵀ · pooledᵀ (2048 × n).
        let logits = addr(&self.logits, s);
        // SAFETY: sizes as above; f16 inputs, f32 output and accumulation.
        unsafe {
            blas_check(
                blas::cublasGemmEx(
                    self.cublas,
                    blas::cublasOperation_t::CUBLAS_OP_T,
                    blas::cublasOperation_t::CUBLAS_OP_N,
                    ci(NUM_CLASSES),
                    ci(plan.n),
                    ci(FEATURES),
                    one,
                    vp(addr(&self.net.fc_w, s)),
                    blas::cudaDataType_t::CUDA_R_16F,
                    ci(FEATURES),
                    vp(addr(&self.pooled, s)),
                    blas::cudaDataType_t::CUDA_R_16F,
                    ci(FEATURES),
                    zero,
                    vpm(logits),
                    blas::cudaDataType_t::CUDA_R_32F,
                    ci(NUM_CLASSES),
                    blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                ),
                "classifier",
            )?;
            dnn_check(
                dnn::cudnnAddTensor(
                    self.cudnn,
                    one,
                    plan.fc_bias_desc.0,
                    vp(addr(&self.net.fc_b, s)),
                    one,
                    plan.logits_desc.0,
                    vpm(logits),
                ),
                "classifier bias",
            )?;
        }
        Ok(())
    }

    fn capture(&self, plan: &Plan) -> Result<CudaGraph> {
        self.stream
            .begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let ran = self.run_eager(plan);
        let graph = self
            .stream
            .end_capture(drv_sys::CUgraphInstantiate_flags_enum(0));
        ran.context("a call failed while being captured")?;
        let graph = graph?.ok_or_else(|| anyhow!("the capture recorded nothing"))?;
        graph.upload()?;
        graph.launch()?;
        self.stream.synchronize()?;
        Ok(graph)
    }

    /// Logits (n × classes, flat) for `n` images given as NCHW f32 pieces in order.
    pub fn forward_parts(&mut self, parts: &[&[f32]], n: usize) -> Result<Vec<f32>> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        ensure!(
            total == n * INPUT_LEN,
            "input holds {total} values, not {n} images"
        );
        let bucket = bucket_for(n, &self.buckets).ok_or_else(|| {
            anyhow!(
                "batch of {n} is larger than this lane's largest ({})",
                self.buckets.last().unwrap_or(&0)
            )
        })?;
        self.net.ctx.bind_to_thread()?;
        // f32 → f16 straight into pinned memory, the pieces in parallel.
        let host = self.host_in.slice_mut(total);
        let mut rest = &mut host[..];
        let mut pieces = Vec::with_capacity(parts.len());
        for p in parts {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(p.len());
            pieces.push((*p, head));
            rest = tail;
        }
        pieces
            .into_par_iter()
            .for_each(|(src, dst)| to_f16_into(src, dst));
        let s = &self.stream;
        let cu = s.cu_stream();
        // SAFETY: `staged` holds the largest bucket; the pinned source stays untouched until
        // the stream is synchronized below.
        unsafe {
            drv::memcpy_htod_async(
                addr(&self.staged, s),
                &self.host_in.slice_mut(total)[..],
                cu,
            )
        }?;
        let plan = &self.plans[&bucket];
        match &plan.graph {
            Some(g) => g.launch()?,
            None => self.run_eager(plan)?,
        }
        let out = n * NUM_CLASSES;
        let logits = addr(&self.logits, s);
        // SAFETY: as above; read after the synchronize.
        unsafe { drv::memcpy_dtoh_async(self.host_out.slice_mut(out), logits, cu) }?;
        s.synchronize()?;
        Ok(self.host_out.slice_mut(out).to_vec())
    }

    /// The forward pass on input already on the GPU (benchmarks: no host copies), `n` a bucket.
    pub fn forward_resident(&mut self, n: usize) -> Result<()> {
        self.net.ctx.bind_to_thread()?;
        let plan = self
            .plans
            .get(&n)
            .ok_or_else(|| anyhow!("no plan for batch {n} (buckets {:?})", self.buckets))?;
        match &plan.graph {
            Some(g) => g.launch()?,
            None => self.run_eager(plan)?,
        }
        self.stream.synchronize()?;
        Ok(())
    }

    /// Uploads `n` images (NCHW f32) once, for [`Lane::forward_resident`]; returns their logits
    /// after one pass.
    pub fn stage(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        self.forward_parts(&[input], n)
    }
}

/// The cuDNN library loaded, for logs.
pub fn versions() -> String {
    // SAFETY: a plain version query.
    let v = unsafe { dnn::cudnnGetVersion() };
    format!("cudnn {}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
}
