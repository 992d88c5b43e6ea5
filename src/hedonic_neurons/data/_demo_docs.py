"""Documentation text that ships with Python itself: the source of the built-in demo corpus.

Standard library only (no numpy, no package imports), so it can run under any Python to check
which docstrings are identical across versions::

    python3.10 src/hedonic_neurons/data/_demo_docs.py candidates > /tmp/310.json   # likewise 3.11-3.13
    python src/hedonic_neurons/data/_demo_docs.py select /tmp/31*.json           # prints OBJECTS

``OBJECTS`` below was made that way on CPython 3.10.13, 3.11.7, 3.12.1 and 3.13.0 (Linux): every
listed object exists and has the same normalised docstring paragraphs on all four, so the demo
corpus is the same text on each (a later patch release could still edit a docstring; the corpus
records a sha256 of its text so a difference is visible).
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys

# Pure-Python or builtin modules whose documentation does not depend on the platform.
MODULES = (
    "builtins",
    "abc",
    "argparse",
    "array",
    "base64",
    "binascii",
    "bisect",
    "calendar",
    "cmath",
    "codecs",
    "colorsys",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.utils",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "getopt",
    "gettext",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "html.parser",
    "http.cookies",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "linecache",
    "logging",
    "math",
    "mimetypes",
    "numbers",
    "operator",
    "pickle",
    "plistlib",
    "pprint",
    "queue",
    "quopri",
    "random",
    "re",
    "sched",
    "secrets",
    "shlex",
    "statistics",
    "string",
    "struct",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "tokenize",
    "traceback",
    "types",
    "unicodedata",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "xml.etree.ElementTree",
    "zipfile",
    "zlib",
)

# fmt: off
_OBJECTS_TEXT = """
abc: ABC ABCMeta ABCMeta.register abstractclassmethod abstractproperty abstractstaticmethod
    update_abstractmethods
argparse: Action ArgumentDefaultsHelpFormatter ArgumentError ArgumentParser ArgumentParser.error
    ArgumentTypeError FileType HelpFormatter MetavarTypeHelpFormatter Namespace
    RawDescriptionHelpFormatter RawTextHelpFormatter
array: ArrayType.append ArrayType.buffer_info ArrayType.byteswap ArrayType.count ArrayType.extend
    ArrayType.frombytes ArrayType.fromfile ArrayType.fromlist ArrayType.fromunicode ArrayType.index
    ArrayType.insert ArrayType.pop ArrayType.remove ArrayType.reverse ArrayType.tobytes ArrayType.tofile
    ArrayType.tolist ArrayType.tounicode array.append array.buffer_info array.byteswap array.count
    array.extend array.frombytes array.fromfile array.fromlist array.fromunicode array.index
    array.insert array.pop array.remove array.reverse array.tobytes array.tofile array.tolist
    array.tounicode
base64: a85decode b16decode b16encode b32decode b32encode b32hexdecode b32hexencode b64encode
    b85decode b85encode decode decodebytes encode encodebytes main standard_b64decode standard_b64encode
    urlsafe_b64decode urlsafe_b64encode
binascii: a2b_hex a2b_qp a2b_uu b2a_base64 b2a_hex b2a_qp b2a_uu crc32 crc_hqx hexlify unhexlify
builtins: ArithmeticError AssertionError AttributeError BaseException BaseException.with_traceback
    BlockingIOError BrokenPipeError BufferError BytesWarning ChildProcessError ConnectionAbortedError
    ConnectionError ConnectionRefusedError ConnectionResetError DeprecationWarning EOFError
    EncodingWarning EnvironmentError Exception FileExistsError FileNotFoundError FutureWarning
    GeneratorExit IOError ImportError ImportWarning IndentationError IndexError InterruptedError
    IsADirectoryError KeyError KeyboardInterrupt LookupError MemoryError ModuleNotFoundError NameError
    NotADirectoryError NotImplementedError OSError OverflowError PendingDeprecationWarning
    PermissionError ProcessLookupError RecursionError ReferenceError ResourceWarning RuntimeError
    RuntimeWarning StopAsyncIteration StopIteration SyntaxError SyntaxWarning SystemError SystemExit
    TabError TimeoutError TypeError UnboundLocalError UnicodeDecodeError UnicodeEncodeError UnicodeError
    UnicodeTranslateError UnicodeWarning UserWarning ValueError Warning ZeroDivisionError abs aiter all
    any ascii bin bytearray bytearray.append bytearray.capitalize bytearray.center bytearray.clear
    bytearray.copy bytearray.decode bytearray.expandtabs bytearray.extend bytearray.fromhex
    bytearray.hex bytearray.insert bytearray.isalnum bytearray.isalpha bytearray.isascii
    bytearray.isdigit bytearray.islower bytearray.isspace bytearray.istitle bytearray.isupper
    bytearray.join bytearray.ljust bytearray.lower bytearray.lstrip bytearray.partition bytearray.pop
    bytearray.remove bytearray.removeprefix bytearray.removesuffix bytearray.replace bytearray.reverse
    bytearray.rjust bytearray.rpartition bytearray.rsplit bytearray.rstrip bytearray.split
    bytearray.splitlines bytearray.strip bytearray.swapcase bytearray.title bytearray.translate
    bytearray.upper bytearray.zfill bytes bytes.capitalize bytes.center bytes.decode bytes.expandtabs
    bytes.fromhex bytes.hex bytes.isalnum bytes.isalpha bytes.isascii bytes.isdigit bytes.islower
    bytes.isspace bytes.istitle bytes.isupper bytes.join bytes.ljust bytes.lower bytes.lstrip
    bytes.partition bytes.removeprefix bytes.removesuffix bytes.replace bytes.rjust bytes.rpartition
    bytes.rsplit bytes.rstrip bytes.split bytes.splitlines bytes.strip bytes.swapcase bytes.title
    bytes.translate bytes.upper bytes.zfill callable chr compile complex.conjugate dict dict.fromkeys
    dict.get dict.pop dict.popitem dict.setdefault dict.update divmod enumerate eval float.conjugate
    float.fromhex float.hex float.is_integer frozenset.copy frozenset.isdisjoint frozenset.issubset
    frozenset.issuperset globals hasattr hash hex id input int.bit_count int.bit_length int.conjugate
    isinstance issubclass len list list.append list.clear list.copy list.count list.extend list.index
    list.insert list.pop list.remove list.reverse list.sort locals memoryview memoryview.cast
    memoryview.hex memoryview.release memoryview.tobytes memoryview.tolist memoryview.toreadonly object
    oct ord pow property property.deleter property.getter property.setter range range.count range.index
    repr reversed round set.add set.clear set.copy set.isdisjoint set.issubset set.issuperset set.remove
    slice slice.indices sorted str.capitalize str.casefold str.center str.encode str.expandtabs
    str.isalnum str.isalpha str.isascii str.isdecimal str.isdigit str.isidentifier str.islower
    str.isnumeric str.isprintable str.isspace str.istitle str.isupper str.join str.ljust str.lower
    str.lstrip str.maketrans str.partition str.removeprefix str.removesuffix str.replace str.rjust
    str.rpartition str.rstrip str.splitlines str.strip str.swapcase str.title str.translate str.upper
    str.zfill sum super tuple tuple.count tuple.index type type.mro
calendar: Calendar Calendar.itermonthdates Calendar.itermonthdays Calendar.itermonthdays2
    Calendar.itermonthdays3 Calendar.itermonthdays4 Calendar.iterweekdays Calendar.monthdatescalendar
    Calendar.monthdays2calendar Calendar.monthdayscalendar Calendar.yeardatescalendar
    Calendar.yeardays2calendar Calendar.yeardayscalendar HTMLCalendar HTMLCalendar.formatday
    HTMLCalendar.formatmonth HTMLCalendar.formatmonthname HTMLCalendar.formatweek
    HTMLCalendar.formatweekday HTMLCalendar.formatweekheader HTMLCalendar.formatyear
    HTMLCalendar.formatyearpage TextCalendar TextCalendar.formatday TextCalendar.formatmonth
    TextCalendar.formatmonthname TextCalendar.formatweek TextCalendar.formatweekday
    TextCalendar.formatweekheader TextCalendar.formatyear TextCalendar.prmonth TextCalendar.prweek
    TextCalendar.pryear calendar format formatstring isleap leapdays month monthcalendar prcal prmonth
    prweek timegm week weekday weekheader
cmath: acos acosh asin asinh atan atanh cos cosh exp isclose isfinite isinf isnan log log10 phase
    polar rect sin sinh sqrt tan tanh
codecs: BufferedIncrementalDecoder BufferedIncrementalEncoder Codec Codec.decode Codec.encode
    CodecInfo EncodedFile IncrementalDecoder IncrementalDecoder.decode IncrementalDecoder.getstate
    IncrementalDecoder.reset IncrementalDecoder.setstate IncrementalEncoder IncrementalEncoder.encode
    IncrementalEncoder.getstate IncrementalEncoder.reset IncrementalEncoder.setstate StreamReader.read
    StreamReader.readline StreamReader.readlines StreamReader.reset StreamReader.seek StreamReaderWriter
    StreamRecoder StreamWriter.reset StreamWriter.write StreamWriter.writelines getdecoder getencoder
    getincrementaldecoder getincrementalencoder getreader getwriter iterdecode iterencode
    make_encoding_map make_identity_dict open
configparser: BasicInterpolation ConfigParser ConfigParser.add_section ConfigParser.set
    ConverterMapping DuplicateOptionError DuplicateSectionError Error ExtendedInterpolation
    Interpolation InterpolationDepthError InterpolationError InterpolationMissingOptionError
    InterpolationSyntaxError MissingSectionHeaderError NoOptionError NoSectionError ParsingError
    RawConfigParser RawConfigParser.add_section RawConfigParser.get RawConfigParser.has_option
    RawConfigParser.has_section RawConfigParser.items RawConfigParser.options RawConfigParser.popitem
    RawConfigParser.read RawConfigParser.read_dict RawConfigParser.read_file RawConfigParser.read_string
    RawConfigParser.remove_option RawConfigParser.remove_section RawConfigParser.sections
    RawConfigParser.set RawConfigParser.write SectionProxy SectionProxy.get
contextlib: AbstractAsyncContextManager AbstractContextManager AsyncContextDecorator AsyncExitStack
    AsyncExitStack.aclose AsyncExitStack.enter_async_context AsyncExitStack.push_async_callback
    AsyncExitStack.push_async_exit ContextDecorator ExitStack ExitStack.close aclosing
    asynccontextmanager closing contextmanager nullcontext redirect_stderr redirect_stdout suppress
copy: copy deepcopy
csv: Dialect Sniffer Sniffer.sniff excel excel_tab unix_dialect
dataclasses: field fields is_dataclass
datetime: date date.ctime date.fromisocalendar date.fromordinal date.fromtimestamp date.isocalendar
    date.isoformat date.isoweekday date.replace date.strftime date.timetuple date.today date.toordinal
    date.weekday datetime datetime.astimezone datetime.combine datetime.ctime datetime.date datetime.dst
    datetime.fromtimestamp datetime.isoformat datetime.now datetime.replace datetime.strptime
    datetime.time datetime.timestamp datetime.timetuple datetime.timetz datetime.tzname
    datetime.utcfromtimestamp datetime.utcnow datetime.utcoffset datetime.utctimetuple time time.dst
    time.isoformat time.replace time.strftime time.tzname time.utcoffset timedelta
    timedelta.total_seconds timezone timezone.dst timezone.fromutc timezone.tzname timezone.utcoffset
    tzinfo tzinfo.dst tzinfo.fromutc tzinfo.tzname tzinfo.utcoffset
decimal: Context Context.Etiny Context.Etop Context.abs Context.add Context.canonical
    Context.clear_flags Context.clear_traps Context.compare Context.compare_signal Context.compare_total
    Context.compare_total_mag Context.copy Context.copy_abs Context.copy_decimal Context.copy_negate
    Context.copy_sign Context.create_decimal Context.create_decimal_from_float Context.divide
    Context.divide_int Context.divmod Context.exp Context.fma Context.is_canonical Context.is_finite
    Context.is_infinite Context.is_nan Context.is_normal Context.is_qnan Context.is_signed
    Context.is_snan Context.is_subnormal Context.is_zero Context.ln Context.log10 Context.logb
    Context.logical_and Context.logical_invert Context.logical_or Context.logical_xor Context.max
    Context.max_mag Context.min Context.min_mag Context.minus Context.multiply Context.next_minus
    Context.next_plus Context.next_toward Context.normalize Context.number_class Context.plus
    Context.power Context.quantize Context.radix Context.remainder Context.remainder_near Context.rotate
    Context.same_quantum Context.scaleb Context.shift Context.sqrt Context.subtract
    Context.to_eng_string Context.to_integral Context.to_integral_exact Context.to_integral_value
    Context.to_sci_string Decimal Decimal.adjusted Decimal.as_integer_ratio Decimal.as_tuple
    Decimal.canonical Decimal.compare Decimal.compare_signal Decimal.compare_total
    Decimal.compare_total_mag Decimal.conjugate Decimal.copy_abs Decimal.copy_negate Decimal.copy_sign
    Decimal.exp Decimal.fma Decimal.from_float Decimal.is_canonical Decimal.is_finite
    Decimal.is_infinite Decimal.is_nan Decimal.is_normal Decimal.is_qnan Decimal.is_signed
    Decimal.is_snan Decimal.is_subnormal Decimal.is_zero Decimal.ln Decimal.log10 Decimal.logb
    Decimal.logical_and Decimal.logical_invert Decimal.logical_or Decimal.logical_xor Decimal.max
    Decimal.max_mag Decimal.min Decimal.min_mag Decimal.next_minus Decimal.next_plus Decimal.next_toward
    Decimal.normalize Decimal.number_class Decimal.quantize Decimal.radix Decimal.remainder_near
    Decimal.rotate Decimal.same_quantum Decimal.scaleb Decimal.shift Decimal.sqrt Decimal.to_eng_string
    Decimal.to_integral Decimal.to_integral_exact Decimal.to_integral_value DecimalTuple
difflib: Differ Differ.compare HtmlDiff HtmlDiff.make_file HtmlDiff.make_table IS_CHARACTER_JUNK
    IS_LINE_JUNK Match SequenceMatcher SequenceMatcher.find_longest_match
    SequenceMatcher.get_grouped_opcodes SequenceMatcher.get_matching_blocks SequenceMatcher.get_opcodes
    SequenceMatcher.quick_ratio SequenceMatcher.ratio SequenceMatcher.real_quick_ratio
    SequenceMatcher.set_seq1 SequenceMatcher.set_seq2 SequenceMatcher.set_seqs context_diff diff_bytes
    get_close_matches ndiff restore unified_diff
email.utils: decode_params decode_rfc2231 encode_rfc2231 format_datetime formataddr make_msgid
    unquote
enum: EnumMeta Flag IntEnum IntFlag auto unique
fnmatch: filter fnmatch fnmatchcase translate
fractions: Fraction Fraction.from_decimal Fraction.from_float Fraction.limit_denominator
functools: cache partialmethod singledispatch singledispatchmethod singledispatchmethod.register
    total_ordering update_wrapper wraps
getopt: getopt gnu_getopt
gettext: c2py
graphlib: CycleError TopologicalSorter TopologicalSorter.add TopologicalSorter.done
    TopologicalSorter.get_ready TopologicalSorter.is_active TopologicalSorter.prepare
    TopologicalSorter.static_order
gzip: BadGzipFile GzipFile GzipFile.fileno GzipFile.read1 GzipFile.rewind decompress open
hashlib: new
heapq: merge nlargest nsmallest
hmac: HMAC HMAC.copy HMAC.digest HMAC.hexdigest HMAC.update digest new
html.parser: HTMLParser HTMLParser.close HTMLParser.feed HTMLParser.get_starttag_text
    HTMLParser.reset
html: escape unescape
http.cookies: BaseCookie BaseCookie.js_output BaseCookie.load BaseCookie.output
    BaseCookie.value_decode BaseCookie.value_encode Morsel SimpleCookie
ipaddress: AddressValueError IPv4Address IPv4Network IPv6Address IPv6Network IPv6Network.hosts
    NetmaskValueError get_mixed_type_key ip_address ip_interface ip_network summarize_address_range
    v4_int_to_packed v6_int_to_packed
itertools: accumulate chain.from_iterable combinations combinations_with_replacement compress count
    cycle dropwhile filterfalse groupby islice pairwise permutations repeat starmap takewhile tee
json: dump dumps load loads
linecache: checkcache clearcache getline getlines lazycache updatecache
logging: BufferingFormatter BufferingFormatter.format BufferingFormatter.formatFooter
    BufferingFormatter.formatHeader FileHandler FileHandler.close FileHandler.emit Filter Filter.filter
    Filterer Filterer.addFilter Filterer.removeFilter Formatter.converter Formatter.format
    Formatter.formatException Formatter.formatStack Formatter.formatTime Formatter.usesTime Handler
    Handler.acquire Handler.close Handler.createLock Handler.emit Handler.flush Handler.format
    Handler.handleError Handler.release Handler.setFormatter Handler.setLevel LogRecord
    LogRecord.getMessage Logger Logger.addHandler Logger.callHandlers Logger.exception Logger.fatal
    Logger.findCaller Logger.getChild Logger.getEffectiveLevel Logger.handle Logger.hasHandlers
    Logger.isEnabledFor Logger.makeRecord Logger.removeHandler Logger.setLevel LoggerAdapter
    LoggerAdapter.critical LoggerAdapter.debug LoggerAdapter.error LoggerAdapter.exception
    LoggerAdapter.getEffectiveLevel LoggerAdapter.hasHandlers LoggerAdapter.info
    LoggerAdapter.isEnabledFor LoggerAdapter.log LoggerAdapter.process LoggerAdapter.setLevel
    LoggerAdapter.warning Manager Manager.getLogger Manager.setLogRecordFactory Manager.setLoggerClass
    NullHandler NullHandler.emit NullHandler.handle PercentStyle.validate PlaceHolder PlaceHolder.append
    RootLogger StrFormatStyle.validate StreamHandler StreamHandler.emit StreamHandler.flush
    StreamHandler.setStream addLevelName captureWarnings critical debug disable error exception fatal
    getLevelName getLogRecordFactory getLogger getLoggerClass info log makeLogRecord setLogRecordFactory
    setLoggerClass shutdown warning
math: acos acosh asin asinh atan atan2 atanh ceil comb copysign cos cosh degrees dist erf erfc exp
    expm1 fabs floor fmod frexp gamma gcd hypot isfinite isinf isnan isqrt lcm ldexp lgamma log10 log1p
    log2 modf perm pow prod radians remainder sin sinh sqrt tan tanh trunc ulp
mimetypes: MimeTypes MimeTypes.add_type MimeTypes.guess_all_extensions MimeTypes.guess_extension
    MimeTypes.guess_type MimeTypes.read MimeTypes.read_windows_registry MimeTypes.readfp add_type
    guess_all_extensions guess_extension guess_type
numbers: Complex Complex.conjugate Integral Number Rational Real Real.conjugate
pickle: PickleBuffer PickleBuffer.raw PickleBuffer.release decode_long encode_long whichmodule
plistlib: dump dumps load loads
pprint: PrettyPrinter.format isreadable isrecursive pformat pp pprint saferepr
queue: Full LifoQueue PriorityQueue Queue Queue.empty Queue.full Queue.get_nowait Queue.join
    Queue.put_nowait Queue.qsize
quopri: decode encode ishex needsquoting quote unhex
random: Random Random.choice Random.choices Random.gauss Random.getstate Random.lognormvariate
    Random.normalvariate Random.paretovariate Random.randbytes Random.randint Random.seed
    Random.setstate Random.vonmisesvariate Random.weibullvariate SystemRandom SystemRandom.getrandbits
    SystemRandom.getstate SystemRandom.randbytes SystemRandom.seed SystemRandom.setstate choice choices
    gauss getstate lognormvariate normalvariate paretovariate randbytes randint seed setstate
    vonmisesvariate weibullvariate
re: Match Match.end Match.expand Match.group Match.groupdict Match.groups Match.span Match.start
    Pattern Pattern.findall Pattern.finditer Pattern.fullmatch Pattern.match Pattern.search
    Pattern.split Pattern.sub Pattern.subn RegexFlag compile error escape findall finditer fullmatch
    match purge search split sub subn
sched: Event scheduler.cancel scheduler.empty scheduler.enter scheduler.enterabs scheduler.run
secrets: randbelow token_bytes token_hex token_urlsafe
shlex: join quote shlex shlex.error_leader shlex.get_token shlex.pop_source shlex.push_source
    shlex.push_token shlex.sourcehook split
statistics: LinearRegression NormalDist NormalDist.cdf NormalDist.from_samples NormalDist.inv_cdf
    NormalDist.overlap NormalDist.pdf NormalDist.quantiles NormalDist.samples NormalDist.zscore
    covariance fmean harmonic_mean mean median median_high median_low mode multimode pstdev pvariance
    quantiles stdev variance
string: Template capwords
tarfile: CompressionError EOFHeaderError EmptyHeaderError ExtractError HeaderError
    InvalidHeaderError ReadError StreamError SubsequentHeaderError TarError TarFile TarFile.add
    TarFile.bz2open TarFile.chmod TarFile.chown TarFile.close TarFile.extract TarFile.extractall
    TarFile.extractfile TarFile.getmember TarFile.getmembers TarFile.getnames TarFile.gettarinfo
    TarFile.gzopen TarFile.list TarFile.makedev TarFile.makedir TarFile.makefifo TarFile.makefile
    TarFile.makelink TarFile.makeunknown TarFile.next TarFile.open TarFile.taropen TarFile.utime
    TarFile.xzopen TarInfo TarInfo.create_gnu_header TarInfo.create_pax_global_header
    TarInfo.create_pax_header TarInfo.create_ustar_header TarInfo.frombuf TarInfo.fromtarfile
    TarInfo.get_info TarInfo.isblk TarInfo.ischr TarInfo.isdev TarInfo.isdir TarInfo.isfifo
    TarInfo.isfile TarInfo.islnk TarInfo.isreg TarInfo.issym TarInfo.replace TarInfo.tobuf
    TruncatedHeaderError calc_chksums copyfileobj is_tarfile itn nti nts open stn
tempfile: SpooledTemporaryFile TemporaryFile gettempdir gettempdirb gettempprefix gettempprefixb
    mkdtemp mkstemp mktemp
textwrap: TextWrapper TextWrapper.fill TextWrapper.wrap dedent fill indent shorten wrap
threading: Barrier Barrier.abort Barrier.reset Barrier.wait BoundedSemaphore
    BoundedSemaphore.release Condition Condition.notify Condition.notifyAll Condition.notify_all
    Condition.wait_for Event Event.clear Event.isSet Event.is_set Event.set RLock Semaphore
    Semaphore.acquire Semaphore.release Thread Thread.getName Thread.isDaemon Thread.is_alive Thread.run
    Thread.setDaemon Thread.setName Thread.start Timer Timer.cancel activeCount active_count
    currentThread current_thread enumerate getprofile gettrace main_thread setprofile settrace
tokenize: detect_encoding generate_tokens open tokenize untokenize
traceback: StackSummary.format StackSummary.from_list TracebackException.format
    TracebackException.from_exception clear_frames extract_stack extract_tb format_exc format_exception
    format_list format_stack format_tb print_exception print_list print_stack print_tb walk_stack
    walk_tb
types: GenericAlias UnionType coroutine new_class prepare_class resolve_bases
unicodedata: UCD.bidirectional UCD.category UCD.combining UCD.decimal UCD.decomposition UCD.digit
    UCD.east_asian_width UCD.is_normalized UCD.lookup UCD.mirrored UCD.name UCD.normalize UCD.numeric
    bidirectional category combining decimal decomposition digit east_asian_width is_normalized lookup
    mirrored name normalize numeric
urllib.parse: parse_qs parse_qsl quote quote_from_bytes quote_plus unquote unquote_plus
    unquote_to_bytes unwrap urldefrag urlencode urljoin urlparse urlsplit urlunparse urlunsplit
uuid: SafeUUID UUID getnode uuid1 uuid3 uuid4 uuid5
warnings: filterwarnings formatwarning resetwarnings showwarning simplefilter
weakref: KeyedRef WeakKeyDictionary WeakKeyDictionary.keyrefs WeakMethod WeakValueDictionary
    WeakValueDictionary.itervaluerefs WeakValueDictionary.valuerefs finalize finalize.detach
    finalize.peek
xml.etree.ElementTree: C14NWriterTarget Comment ElementTree ElementTree.find ElementTree.findall
    ElementTree.findtext ElementTree.getroot ElementTree.iter ElementTree.iterfind ElementTree.parse
    ElementTree.write PI ProcessingInstruction QName XML XMLID XMLPullParser.close XMLPullParser.feed
    XMLPullParser.read_events canonicalize dump fromstring fromstringlist indent iselement iterparse
    parse register_namespace tostring
zipfile: LargeZipFile PyZipFile PyZipFile.writepy ZipExtFile ZipExtFile.peek ZipExtFile.read
    ZipExtFile.read1 ZipExtFile.readline ZipFile ZipFile.close ZipFile.getinfo ZipFile.infolist
    ZipFile.namelist ZipFile.open ZipFile.printdir ZipFile.setpassword ZipFile.write ZipFile.writestr
    ZipInfo ZipInfo.from_file ZipInfo.is_dir is_zipfile
zlib: adler32 compressobj crc32 decompress decompressobj
"""
# fmt: on


def _parse_objects(text: str) -> tuple[str, ...]:
    """``module: qualname qualname ...`` lines (continuation lines indented) -> ``module:qualname``."""
    names: list[str] = []
    module = ""
    for line in text.strip().splitlines():
        if not line.startswith(" "):
            module, _, line = line.partition(":")
        names.extend(f"{module}:{q}" for q in line.split())
    return tuple(names)


OBJECTS: tuple[str, ...] = _parse_objects(_OBJECTS_TEXT)

_WS = re.compile(r"\s+")


def resolve(name: str):
    """The object named ``module:qualname`` (e.g. ``builtins:str.upper``), or None if missing."""
    module, _, qualname = name.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj


def paragraphs(obj) -> list[str]:
    """The object's own docstring split at blank lines, whitespace collapsed to single spaces."""
    doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
    if not doc:
        return []
    doc = inspect.cleandoc(doc)
    return [_WS.sub(" ", p).strip() for p in re.split(r"\n\s*\n", doc) if p.strip()]


def candidates() -> dict[str, list[str]]:
    """Every public function, class and class method defined in :data:`MODULES`, with paragraphs."""
    out: dict[str, list[str]] = {}
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for attr in sorted(dir(mod)):
            obj = getattr(mod, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod_name:
                continue
            if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            out[f"{mod_name}:{attr}"] = paragraphs(obj)
            if inspect.isclass(obj):
                for meth in sorted(vars(obj)):
                    member = vars(obj)[meth]
                    if meth.startswith("_"):
                        continue
                    if inspect.isroutine(member) or isinstance(member, (classmethod, staticmethod)):
                        out[f"{mod_name}:{attr}.{meth}"] = paragraphs(getattr(obj, meth))
    return out


def select(paths: list[str]) -> list[str]:
    """Names present in every candidates file with the same non-empty paragraphs in all of them."""
    runs = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            runs.append(json.load(fh))
    common = set(runs[0]).intersection(*runs[1:])
    return sorted(n for n in common if runs[0][n] and all(r[n] == runs[0][n] for r in runs))


if __name__ == "__main__":
    if sys.argv[1:2] == ["candidates"]:
        json.dump(candidates(), sys.stdout, indent=0, sort_keys=True)
    elif sys.argv[1:2] == ["objects"]:
        json.dump({n: paragraphs(resolve(n)) for n in OBJECTS}, sys.stdout, indent=0, sort_keys=True)
    elif sys.argv[1:2] == ["select"]:
        print("\n".join(select(sys.argv[2:])))
    else:
        sys.exit("usage: _demo_docs.py candidates | objects | select FILE...")
